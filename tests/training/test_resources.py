"""``train()`` refuses GPUs it cannot have, before the run directory or any rank exists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from flatmtl.workers import engine
from flatmtl.workers.training import local
from flatmtl.workers.training.errors import ConfigError
from tests.training.specs import document


@pytest.mark.parametrize("processes", [1, 2])
def test_gpus_without_cuda_are_refused_naming_the_field_and_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, processes: int
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def no_launch(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a rank was launched")

    monkeypatch.setattr(engine, "launch", no_launch)
    spec = document(processes=processes, resources={"cpus": 1, "gpus": 0.5})
    with pytest.raises(ConfigError) as refused:
        local.train(spec, tmp_path / "run")
    [problem] = refused.value.problems
    assert (problem.field, problem.value) == ("resources.gpus", 0.5)
    assert "resources.gpus" in str(refused.value) and "0.5" in str(refused.value) and "CUDA" in str(refused.value)
    assert not (tmp_path / "run").exists()
