"""``follow``: the one loop that the service demo and the reproduction's sweeps use to wait for a job, against a
scripted API (no server, no worker process)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import cast

import httpx
import pytest

from flatmtl.workers.worker.service_demo import METRIC, DemoError, follow


class Worker:
    """A worker process as far as ``follow`` looks at it."""

    def __init__(self, returncode: int | None = None) -> None:
        self.returncode = returncode

    def poll(self) -> int | None:
        return self.returncode


class ScriptedApi:
    """Each ``GET /v1/jobs/1`` takes the next ``(state, best metric)`` of ``script`` (the last one repeats); the
    trials answer with that poll's best. Every request is recorded."""

    def __init__(self, script: list[tuple[str, float]]) -> None:
        self.script = script
        self.polls = 0
        self.requests: list[tuple[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path))
        if request.method == "POST":
            return httpx.Response(200, json={"id": 1, "state": "cancelled"})
        if request.url.path == "/v1/jobs/1/trials":
            best = self.script[min(self.polls, len(self.script)) - 1][1]
            return httpx.Response(200, json={"items": [{"trial_index": 0, "state": "running", "best_metric": best}]})
        state = self.script[min(self.polls, len(self.script) - 1)][0]
        self.polls += 1
        return httpx.Response(200, json={"id": 1, "state": state, "progress": 0.5})


def client(api: ScriptedApi) -> httpx.Client:
    return httpx.Client(base_url="http://api", transport=httpx.MockTransport(api))


def test_follow_polls_until_the_job_ends_and_echoes_only_changes(tmp_path: Path) -> None:
    script = [("running", 0.5), ("running", 0.6), ("running", 0.6), ("succeeded", 0.6)]
    api, lines = ScriptedApi(script), cast(list[str], [])
    worker = cast(subprocess.Popen[bytes], Worker())
    job = follow(client(api), 1, worker, lines.append, timeout_s=10, worker_log=tmp_path / "w.log", poll_s=0.001)
    assert job["state"] == "succeeded" and [t["trial_index"] for t in job["trials"]] == [0]
    assert api.polls == 4 and ("POST", "/v1/jobs/1/cancel") not in api.requests
    assert len(lines) == 3  # the third poll changed nothing
    assert [f"{METRIC} 0.5000" in lines[0], f"{METRIC} 0.6000" in lines[1], "job 1 succeeded" in lines[2]] == [True] * 3


def test_a_job_still_running_at_the_timeout_is_cancelled(tmp_path: Path) -> None:
    api = ScriptedApi([("running", 0.5)])
    worker = cast(subprocess.Popen[bytes], Worker())
    with pytest.raises(DemoError, match="within 0 s and was cancelled"):
        follow(client(api), 1, worker, lambda _: None, timeout_s=0.05, worker_log=tmp_path / "w.log", poll_s=0.01)
    assert api.requests[-1] == ("POST", "/v1/jobs/1/cancel") and api.polls >= 2


def test_a_worker_that_exits_first_fails_the_follow_naming_its_log(tmp_path: Path) -> None:
    api, log = ScriptedApi([("running", 0.5)]), tmp_path / "worker.log"
    worker = cast(subprocess.Popen[bytes], Worker(returncode=3))
    with pytest.raises(DemoError, match="exited with code 3") as failed:
        follow(client(api), 1, worker, lambda _: None, timeout_s=10, worker_log=log, poll_s=0.01)
    assert str(log) in str(failed.value) and api.polls == 1
    assert ("POST", "/v1/jobs/1/cancel") not in api.requests


def test_a_job_that_ended_is_returned_even_when_the_worker_has_exited_since(tmp_path: Path) -> None:
    api = ScriptedApi([("failed", 0.5)])
    worker = cast(subprocess.Popen[bytes], Worker(returncode=0))
    job = follow(client(api), 1, worker, lambda _: None, timeout_s=10, worker_log=tmp_path / "w.log", poll_s=0.01)
    assert job["state"] == "failed"
