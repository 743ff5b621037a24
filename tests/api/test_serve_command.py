"""``flatmtl serve``: its options reach ``flatmtl.api.server.serve``, bad ones are usage errors, and a real
two-process server started from the command line answers /healthz."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

import flatmtl.api.server
from flatmtl.service.cli import serve
from flatmtl.service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[dict[str, Any]]:
    """What ``flatmtl.api.server.serve`` was called with (nothing is started)."""
    for name in [n for n in os.environ if n.startswith("FLATMTL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("FLATMTL_DATA_DIR", str(tmp_path))
    found: list[dict[str, Any]] = []
    monkeypatch.setattr(
        flatmtl.api.server, "serve", lambda settings, **kwargs: found.append({"settings": settings, **kwargs})
    )
    return found


def test_defaults_run_one_process_with_the_access_log(calls: list[dict[str, Any]], tmp_path: Path) -> None:
    result = CliRunner().invoke(serve, [])
    assert result.exit_code == 0, result.output
    (call,) = calls
    assert (call["host"], call["port"], call["workers"], call["access_log"]) == (None, None, 1, True)
    assert call["settings"].data_dir == tmp_path


def test_options_reach_the_server(calls: list[dict[str, Any]], tmp_path: Path) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text("api_port: 9123\nreads_open: true\n")
    args = ["--host", "0.0.0.0", "--port", "8081", "--workers", "3", "--no-access-log", "--config", str(config)]
    result = CliRunner().invoke(serve, args)
    assert result.exit_code == 0, result.output
    (call,) = calls
    assert (call["host"], call["port"], call["workers"], call["access_log"]) == ("0.0.0.0", 8081, 3, False)
    settings: Settings = call["settings"]
    assert (settings.api_port, settings.reads_open) == (9123, True)


@pytest.mark.parametrize(
    ("value", "why"), [("0", "not in the range x>=1"), ("-2", "not in the range x>=1"), ("two", "not a valid integer")]
)
def test_bad_worker_counts_are_usage_errors(calls: list[dict[str, Any]], value: str, why: str) -> None:
    result = CliRunner().invoke(serve, ["--workers", value])
    assert result.exit_code == 2
    assert "Invalid value for '--workers'" in result.output and value in result.output and why in result.output
    assert calls == []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_two_worker_processes_answer_without_an_access_log(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLATMTL_")}
    env["FLATMTL_DATA_DIR"] = str(tmp_path)
    command = [sys.executable, "-c", "from flatmtl.workers.cli import main; main()", "serve", "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--workers", "2", "--no-access-log"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout or ()), daemon=True)
    reader.start()

    def started() -> int:
        return sum("Application startup complete" in line for line in list(lines))

    try:
        deadline = time.monotonic() + 60
        while started() < 2 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.1)
        assert started() == 2, f"exit code {process.poll()}: {''.join(lines)}"
        for _ in range(4):
            answer = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5.0)
            assert (answer.status_code, answer.json()) == (200, {"status": "ok"})
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        reader.join(timeout=10)
    assert not any("GET /healthz" in line for line in lines), "".join(lines)
