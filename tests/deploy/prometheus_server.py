"""A real Prometheus server, configured from deploy/prometheus, and the checks run through its HTTP API.

:func:`prometheus` runs the shipped scrape config (with the target and a 1 s interval swapped in) and rules;
:func:`check_every_expression` runs every dashboard and alert expression at one instant and requires data.
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
    metric_names,
    rule_expressions,
    without_healthy_empty_matchers,
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
    workdir.mkdir(parents=True, exist_ok=True)
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
        try:
            wait_for(lambda: urllib.request.urlopen(f"{base}/-/ready", timeout=1).status == 200, 30, "Prometheus")
        except TimeoutError as error:
            raise TimeoutError(f"{error}; log:\n{log_path.read_text()}") from error
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)


def query(base: str, expr: str, at: float) -> list[dict[str, Any]]:
    """An instant query at unix time ``at``; its result vector (fails on a PromQL error)."""
    answer = api_get(base, "/api/v1/query", query=expr, time=f"{at:.3f}")
    assert answer["status"] == "success", f"{expr!r} failed: {answer}"
    return answer["data"]["result"]


def exported_names(base: str, at: float) -> set[str]:
    """Every metric name Prometheus holds a sample of at ``at`` (scraped within the staleness window)."""
    return {series["metric"]["__name__"] for series in query(base, 'group by (__name__) ({__name__=~".+"})', at)}


def _expressions(job_id: str) -> list[tuple[str, str, bool]]:
    """(where, expression, whether it selects the job) for every dashboard expression as Grafana sends it with
    ``job_id`` selected, and every alert expression with ``bool`` comparisons (:func:`keep_all_series`): a
    healthy service must still produce every series an alert looks at, alarm or not."""
    found = [
        (where, grafana_to_promql(expr, RATE_WINDOW, job_id), "$job_id" in expr or "job_id)" in expr)
        for where, expr in dashboard_expressions()
    ]
    return found + [(where, keep_all_series(expr), False) for where, expr in rule_expressions()]


def check_every_expression(base: str, at: float, job_id: str) -> None:
    """Every dashboard and alert expression returns data at ``at``; the job's panels return the job's series.

    An empty result passes only under the rule of :data:`HEALTHY_EMPTY_MATCHERS`. Every metric any expression
    names must be among those Prometheus scraped (no panel refers to a metric nobody exports).
    """
    names = exported_names(base, at)
    problems = []
    for where, expr, selects_job in _expressions(job_id):
        missing = metric_names(expr) - names
        if missing:
            problems.append(f"{where}: {sorted(missing)} not scraped")
            continue
        result = query(base, expr, at)
        if not result:
            fallback = without_healthy_empty_matchers(expr)
            if fallback is None or not query(base, fallback, at):
                problems.append(f"{where}: no result for {expr}")
            continue
        jobs = {series["metric"].get("job_id") for series in result}
        if selects_job and job_id not in jobs:
            problems.append(f"{where}: no series of job {job_id} in {result}")
    assert not problems, "\n".join(problems)


def check_rules_healthy(base: str) -> None:
    """Every alert rule has been evaluated by the server, and without error."""

    def rules() -> list[dict[str, Any]]:
        return [rule for group in api_get(base, "/api/v1/rules")["data"]["groups"] for rule in group["rules"]]

    wait_for(lambda: all(rule.get("lastEvaluation", "").startswith("2") for rule in rules()), 10, "rules evaluated")
    unhealthy = [(rule["name"], rule.get("lastError")) for rule in rules() if rule["health"] != "ok"]
    assert not unhealthy, f"rules failing to evaluate: {unhealthy}"
