"""A real Prometheus server, configured from deploy/prometheus, scraping any target for a test.

``check_every_expression(target, ...)`` is the end-to-end check of the operator files: the shipped
scrape config (with the target and a 1 s interval swapped in) and rules, then every dashboard and
alert expression run through the HTTP API. The target is a parameter: a stub serving the telemetry
registry today, the running API when a test starts one.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.promql import (
    PROMETHEUS_CONFIG,
    RULE_FILES,
    binary,
    dashboard_expressions,
    grafana_to_promql,
    keep_all_series,
    rule_expressions,
)

RATE_WINDOW = "1m"
"""What ``$__rate_interval`` becomes: long enough for several 1 s scrapes."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _config(target: str, metrics_path: str) -> dict[str, Any]:
    """The shipped config with the target, a 1 s cadence and absolute rule paths."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(path) for path in RULE_FILES]
    (scrape,) = config["scrape_configs"]
    scrape["static_configs"] = [{"targets": [target]}]
    scrape["metrics_path"] = metrics_path
    return config


def api_get(base: str, path: str, **params: str) -> dict[str, Any]:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}" if params else f"{base}{path}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"gave up after {timeout_s:.0f} s waiting for {what}")


@contextmanager
def prometheus(target: str, workdir: Path, metrics_path: str = "/metrics") -> Iterator[str]:
    """A Prometheus scraping ``target`` (host:port) every second; yields its base URL, stops it after."""
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(_config(target, metrics_path)))
    base = f"http://127.0.0.1:{free_port()}"
    log_path = workdir / "prometheus.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [
                binary("prometheus"),
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={base.removeprefix('http://')}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: urllib.request.urlopen(f"{base}/-/ready", timeout=1).status == 200, 15, "Prometheus ready")
        yield base
    except TimeoutError as error:
        raise TimeoutError(f"{error}; log:\n{log_path.read_text()}") from error
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)


def _scrapes(base: str) -> int:
    """How many scrapes of the target the TSDB holds (samples of its ``up`` series in the last minute)."""
    result = api_get(base, "/api/v1/query", query="count_over_time(up[1m])")["data"]["result"]
    return int(float(result[0]["value"][1])) if result else 0


def check_every_expression(target: str, workdir: Path, *, scrapes: int = 3, metrics_path: str = "/metrics") -> None:
    """Scrape ``target`` until ``scrapes`` samples are stored, then require every dashboard and alert
    expression to succeed with a non-empty result and every rule to evaluate without error.

    Alert expressions run with ``bool`` comparisons (:func:`keep_all_series`): a healthy target must
    still produce every series the alert looks at, alarm or not.
    """
    with prometheus(target, workdir, metrics_path) as base:
        wait_for(lambda: _scrapes(base) >= scrapes, 20, f"{scrapes} scrapes of {target}")
        up = api_get(base, "/api/v1/query", query="up")["data"]["result"]
        assert [sample["value"][1] for sample in up] == ["1"], f"target {target} is not up: {up}"
        expressions = [(where, grafana_to_promql(expr, RATE_WINDOW)) for where, expr in dashboard_expressions()]
        expressions += [(where, keep_all_series(expr)) for where, expr in rule_expressions()]
        empty = []
        for where, expr in expressions:
            answer = api_get(base, "/api/v1/query", query=expr)
            assert answer["status"] == "success", f"{where}: {expr!r} failed: {answer}"
            if not answer["data"]["result"]:
                empty.append(f"{where}: {expr}")
        assert not empty, "expressions with no result:\n" + "\n".join(empty)
        wait_for(
            lambda: all(
                rule.get("lastEvaluation", "").startswith("2")
                for group in api_get(base, "/api/v1/rules")["data"]["groups"]
                for rule in group["rules"]
            ),
            10,
            "every rule evaluated once",
        )
        unhealthy = [
            (rule["name"], rule.get("lastError"))
            for group in api_get(base, "/api/v1/rules")["data"]["groups"]
            for rule in group["rules"]
            if rule["health"] != "ok"
        ]
        assert not unhealthy, f"rules failing to evaluate: {unhealthy}"
