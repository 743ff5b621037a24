"""These tests run tiny models, for which torch's intra-op threads cost more than they gain (much more on a
busy 2-core machine): run them single-threaded and restore the setting afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
