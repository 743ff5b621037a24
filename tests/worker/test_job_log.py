"""The job's log file on a full disk: /dev/full answers every write with ENOSPC, as a full filesystem does."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from flatmtl.service.queue import Lease
from flatmtl.workers.worker.loop import job_log


def test_lines_the_job_log_cannot_write_are_named_in_the_worker_log(caplog: pytest.LogCaptureFixture) -> None:
    lease = Lease(job_id=7, token=1, owner="w", attempt=1, expires_at=datetime.now(UTC), kind="train", spec={})
    with caplog.at_level(logging.INFO, logger="flatmtl.worker"), job_log(Path("/dev/full"), lease) as logger:
        for epoch in range(3):
            logger.info("epoch %d done", epoch)
    worker_lines = [r.getMessage() for r in caplog.records if r.name == "flatmtl.worker"]
    job_lines = [r.getMessage() for r in caplog.records if r.name.startswith("flatmtl.worker.job.7.")]
    assert job_lines == [f"epoch {epoch} done" for epoch in range(3)]  # still in the worker's own log
    assert len(worker_lines) == 2, worker_lines  # said once when it starts, and once at the end
    assert "job 7: its log /dev/full cannot be written (OSError [ENOSPC]" in worker_lines[0]
    assert "job 7: its log /dev/full is missing lines (" in worker_lines[1]
