"""Helpers for the tests that run real work: Ray present (required in CI), tiny specs, worker subprocesses."""

from __future__ import annotations

import contextlib
import copy
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flatmtl.workers.worker.service_demo import WORKER_COMMAND

TASKS = ("top_left", "bottom_right")
TRAIN_SIZE = 128
BATCH_SIZE = 16
TINY: dict[str, Any] = {
    "problem": "multi_digits",
    "problem_options": {"train_size": TRAIN_SIZE, "test_size": 64},
    "model": "mlp",
    "model_options": {"hidden": [16]},
    "epochs": 2,
    "batch_size": BATCH_SIZE,
    "seed": 5,
    "processes": 2,
}


def require_ray() -> None:
    """Skip without Ray, except in CI (``CI`` set), where a missing Ray is a failure."""
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("Ray is not installed; CI must run the worker tests (pip install 'flatmtl[ray]')")
        pytest.skip("Ray is not installed")


def tiny(**overrides: Any) -> dict[str, Any]:
    spec = copy.deepcopy(TINY)
    spec.update(overrides)
    return spec


def steps_per_epoch(processes: int = 2, train_size: int = TRAIN_SIZE) -> int:
    return train_size // (BATCH_SIZE * processes)


def start_worker(env: dict[str, str], log_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """A ``flatmtl worker`` subprocess in its own session (so a test can kill it alone). Its Ray declares 8 CPUs so
    that 3 two-process trials run at once: on 2 cores their start-up (process spawns, imports) overlaps."""
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            [*WORKER_COMMAND, "--poll", "0.2", "--num-cpus", "8", *args],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def line_count(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def kill_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process and every process it started (its local Ray: GCS, raylet, trials, ranks), as a crashed
    machine or container loses them all at once."""
    import psutil

    try:
        parent = psutil.Process(process.pid)
        victims = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for victim in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            victim.kill()
    psutil.wait_procs(victims, timeout=30)
    process.wait()


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
