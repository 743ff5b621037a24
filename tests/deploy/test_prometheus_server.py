"""A real Prometheus scrapes the real API while a real worker trains a job; every dashboard and alert expression
answers through Prometheus's HTTP API, and promtool accepts the API's scrapes during and after the job."""

from __future__ import annotations

import math
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.live_service import require_ray, running_service
from tests.deploy.prometheus_server import check_every_expression, check_rules_healthy, prometheus, query, wait_for
from tests.deploy.promql import binary

pytestmark = pytest.mark.slow

EPOCHS = 400
"""Far more than the test waits for: the job is cancelled once the checks ran, so it is running throughout."""
JOB = {
    "problem": "multi_digits",
    "problem_options": {"train_size": 256, "test_size": 64},
    "model": "mlp",
    "model_options": {"hidden": [16]},
    "method": {"aggregator": "mgda", "wrapper": "fmtl"},
    "epochs": EPOCHS,
    "batch_size": 32,
    "seed": 0,
    "processes": 1,
}
SCRAPES_WITH_PROGRESS = 3
"""Prometheus must hold this many changes of the job's sample counter before the expressions run."""
TRAINING_WAIT_S = 300
"""Ray's start and the first epoch take about a minute on 2 idle cores, several on a loaded machine."""


def _promtool_check_metrics(text: bytes) -> None:
    result = subprocess.run(
        [binary("promtool"), "check", "metrics"], input=text, capture_output=True, timeout=60, check=False
    )
    output = (result.stdout + result.stderr).decode()
    assert result.returncode == 0 and not output.strip(), output


def _job_samples(text: bytes, job_id: str) -> dict[str, float]:
    return {
        sample.name + str(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
        if sample.labels.get("job_id") == job_id
    }


@pytest.mark.timeout(TRAINING_WAIT_S + 120)
def test_prometheus_scrapes_a_running_job_and_every_panel_and_alert_answers(tmp_path: Path) -> None:
    binary("prometheus")
    binary("promtool")
    require_ray()
    with running_service(tmp_path / "service") as service, prometheus(service.target, tmp_path / "prom") as base:
        job_id = str(service.submit(JOB))
        progress = f'changes(flatmtl_training_samples_total{{job_id="{job_id}"}}[1m])'

        def trained(at: list[float]) -> bool:
            assert service.worker.poll() is None, f"the worker exited\n{service.log_tail()}"
            assert service.job(int(job_id))["state"] in ("queued", "running"), service.log_tail()
            at[:] = [time.time()]
            result = query(base, progress, at[0])
            return bool(result) and float(result[0]["value"][1]) >= SCRAPES_WITH_PROGRESS

        at: list[float] = []
        try:
            wait_for(
                lambda: trained(at), TRAINING_WAIT_S, f"{SCRAPES_WITH_PROGRESS} scrapes of job {job_id}'s progress"
            )
        except TimeoutError as error:
            raise AssertionError(f"{error}\n{service.log_tail()}") from error
        during = service.scrape()
        check_every_expression(base, at[0], job_id)
        check_rules_healthy(base)
        assert not query(base, "ALERTS", time.time()), "a healthy run must raise no alert, not even a pending one"

        training = _job_samples(during, job_id)
        assert training and all(math.isfinite(value) for value in training.values()), training
        service.cancel(int(job_id))
        after = service.scrape()
    assert not _job_samples(after, job_id), "a job's series must vanish when it ends"
    _promtool_check_metrics(during)
    _promtool_check_metrics(after)
