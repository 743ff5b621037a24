"""The service on a two-node Ray cluster whose second node shares no files with the head and the worker.

The second node runs in its own mount namespace with a tmpfs over the service's data directory, so a rank
there that wrote to, or read from, a path of the worker's would fail or lose its files. Runs persist to a
real S3-compatible server (moto's, on 127.0.0.1) through Ray Train; the worker collects them from there.
The cluster uses token authentication, as ``ray start`` sets it up, and the worker joins it with the token.
Both jobs train a problem shipped with the job (``flatmtl submit --code``), which each rank imports from Ray's
working directory on its own node.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from flatmtl.service import code
from flatmtl.workers.worker.service_demo import (
    API_COMMAND,
    WORKER_COMMAND,
    api_call,
    api_client,
    create_demo_token,
    free_port,
    process,
    service_env,
    wait_healthy,
)
from tests.worker.cluster import (
    RayCluster,
    Service,
    code_token,
    require_ray,
    stop,
    tiny,
    two_node_cluster,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
BUCKET = "flatmtl"
SHIPPED_PROBLEM = """
from flatmtl.workers.problems.multi_image import MultiDigits


class ShippedDigits(MultiDigits):
    \"\"\"multi_digits, imported from the code shipped with the job.\"\"\"
"""
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class Deployment(Service):
    cluster: RayCluster
    s3_endpoint: str
    shipped: dict[str, str]
    """The spec fields of a problem shipped with the job (``flatmtl submit --code``): every rank imports it from
    Ray's working directory on its own node."""

    def artifact(self, job_id: int, path: str) -> bytes:
        response = self.client.get(f"/v1/jobs/{job_id}/artifacts/{path}")
        assert response.status_code == 200, (path, response.status_code)
        return response.content

    def epochs(self, job_id: int, run_dir: str) -> list[dict[str, Any]]:
        text = self.artifact(job_id, f"{run_dir}/metrics_epochs.jsonl").decode()
        return [json.loads(line) for line in text.splitlines()]

    def stored(self, prefix: str) -> list[str]:
        """Object keys under ``prefix`` in the bucket."""
        import pyarrow.fs

        s3 = pyarrow.fs.S3FileSystem(endpoint_override=self.s3_endpoint, scheme="http", **_keys())
        selector = pyarrow.fs.FileSelector(f"{BUCKET}/{prefix}", recursive=True, allow_not_found=True)
        return [info.path for info in s3.get_file_info(selector) if info.type == pyarrow.fs.FileType.File]


def _keys() -> dict[str, str]:
    return {"access_key": CREDENTIALS["AWS_ACCESS_KEY_ID"], "secret_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}


def _s3_server(out: Path) -> tuple[subprocess.Popen[bytes], str]:
    import pyarrow.fs

    port = free_port()
    moto = Path(sys.executable).with_name("moto_server")
    assert moto.exists(), "moto's server is missing: pip install 'flatmtl[dev]' (moto[server])"
    with (out / "s3.log").open("ab") as log:
        server = subprocess.Popen(
            [str(moto), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    endpoint = f"127.0.0.1:{port}"

    def bucket_made() -> bool:
        try:
            pyarrow.fs.S3FileSystem(
                endpoint_override=endpoint, scheme="http", allow_bucket_creation=True, **_keys()
            ).create_dir(BUCKET)
        except OSError:
            return False
        return True

    wait_until(bucket_made, 60, "the S3 server to start")
    return server, endpoint


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    require_ray()
    out = tmp_path_factory.mktemp("multinode")
    data = out / "data"
    data.mkdir()
    server, endpoint = _s3_server(out)
    try:
        with two_node_cluster(out, data, extra_env=CREDENTIALS) as cluster:
            create_demo_token(data, "tester")
            token = code_token(data, "tester")
            env = service_env(
                data,
                FLATMTL_LEASE_SECONDS="20",
                FLATMTL_RAY_ADDRESS=cluster.address,
                FLATMTL_RAY_STORAGE=f"s3://{BUCKET}/runs?endpoint_override={endpoint}&scheme=http",
            )
            env.update({key: value for key, value in cluster.env.items() if key.startswith(("RAY_", "AWS_"))})
            port = free_port()
            with (
                process([*WORKER_COMMAND, "--poll", "0.5"], env, out / "worker.log") as worker,
                process([*API_COMMAND, "--port", str(port)], env, out / "api.log") as api,
                api_client(f"http://127.0.0.1:{port}", token) as client,
            ):
                wait_healthy(client, api, out / "api.log", timeout_s=90)
                yield Deployment(client, out, worker, cluster, endpoint, _ship_problem(client, out / "code"))
    finally:
        stop(server)


def _ship_problem(client: httpx.Client, directory: Path) -> dict[str, str]:
    (directory / "shipped_digits").mkdir(parents=True)
    (directory / "shipped_digits" / "__init__.py").write_text(SHIPPED_PROBLEM)
    archive = code.pack(directory, 2**20)
    headers = {"Content-Type": "application/octet-stream"}
    digest = api_call(client, "POST", "/v1/code", content=archive, headers=headers)["digest"]
    return {"problem": "shipped_digits:ShippedDigits", "code": digest}


def _rank_on_second_node(cluster: RayCluster) -> Any:
    for candidate in cluster.node_processes():
        try:
            if "RayTrainWorker" in " ".join(candidate.cmdline()):
                return candidate
        except Exception:  # a process that ended meanwhile
            continue
    return None


def test_a_ddp_job_spans_both_nodes_and_resumes_from_storage_after_a_rank_is_killed(deployment: Deployment) -> None:
    """Two ranks, one per node (each asks for more CPUs than half a node); the rank on the second node is
    SIGKILLed once the first epoch is in storage. Ray Train restarts the worker group and the ranks restore the
    last checkpoint from S3: the finished run's first epoch is the very record reported before the kill (its
    timings included, which a run retrained from scratch would not reproduce)."""
    spec = tiny(
        epochs=4,
        problem_options={"train_size": 1024, "test_size": 64},
        resources={"cpus": 1.5},
        **deployment.shipped,
    )
    job_id = deployment.submit(spec)
    run_dir = "run"
    first = wait_until(
        lambda: deployment.job(job_id)["state"] == "running" and _first_epoch(deployment, job_id, run_dir),
        240,
        "the first epoch to reach the API",
        interval_s=0.5,
    )
    rank = wait_until(lambda: _rank_on_second_node(deployment.cluster), 30, "a rank on the second node")
    rank.kill()
    job = deployment.wait_ended(job_id, 300)
    assert job["state"] == "succeeded", job["error"]
    assert job["result"]["steps"] == 4 * 1024 // (16 * 2)

    epochs = deployment.epochs(job_id, run_dir)
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    assert epochs[0] == first, "the resumed run did not start from the checkpoint of the first epoch"
    summary = json.loads(deployment.artifact(job_id, f"{run_dir}/summary.json"))
    assert summary["status"] == "SUCCEEDED" and summary["processes"] == 2
    assert deployment.artifact(job_id, f"{run_dir}/checkpoints/latest.pt")
    stored = deployment.stored(f"runs/jobs/{job_id}/train/trial-000")
    assert any(key.endswith("epoch_0004/checkpoints/latest.pt") for key in stored), stored
    assert not any("/ray/" in a["path"] for a in _artifacts(deployment, job_id)), "runs persist in S3, not locally"


def _first_epoch(deployment: Deployment, job_id: int, run_dir: str) -> dict[str, Any] | None:
    response = deployment.client.get(f"/v1/jobs/{job_id}/artifacts/{run_dir}/metrics_epochs.jsonl")
    if response.status_code != 200 or not response.text.strip():
        return None
    return json.loads(response.text.splitlines()[0])


def _artifacts(deployment: Deployment, job_id: int) -> list[dict[str, Any]]:
    return api_call(deployment.client, "GET", f"/v1/jobs/{job_id}/artifacts")["items"]


def test_a_sweep_with_a_failing_trial_is_partially_failed_with_every_result_over_rest(deployment: Deployment) -> None:
    """Three one-process trials over both nodes; the one whose FAMO step size overflows fails with its reason,
    the others succeed with their metrics and checkpoints collected from S3."""
    rates = [0.025, 1e300, 0.01]
    sweep = {
        "kind": "sweep",
        "base": tiny(processes=1, method={"weighting": {"name": "famo"}}, **deployment.shipped),
        "space": {"weighting.lr": {"type": "grid", "values": rates}},
        "metric": "test/mean/accuracy",
        "mode": "max",
    }
    job_id = deployment.submit(sweep)
    job = deployment.wait_ended(job_id, 300)
    assert job["state"] == "partially_failed", job
    assert job["result"]["trials"] == {"succeeded": 2, "failed": 1}
    assert job["error"].startswith("1 of 3 trials failed: trial 1: ") and "NaN" in job["error"], job["error"]

    trials = {t["trial_index"]: t for t in api_call(deployment.client, "GET", f"/v1/jobs/{job_id}/trials")["items"]}
    assert [trials[i]["state"] for i in range(3)] == ["succeeded", "failed", "succeeded"]
    assert "NaN" in trials[1]["result"]["error"]
    assert job["result"]["best_trial"] in (0, 2)
    for index in (0, 2):
        run_dir = trials[index]["result"]["run_dir"]
        epochs = deployment.epochs(job_id, run_dir)
        assert [e["epoch"] for e in epochs] == [1, 2]
        assert trials[index]["best_metric"] == pytest.approx(
            max(sum(e[f"test/{t}/accuracy"] for t in ("top_left", "bottom_right")) / 2 for e in epochs)
        )
        assert json.loads(deployment.artifact(job_id, f"{run_dir}/summary.json"))["status"] == "SUCCEEDED"
        assert deployment.artifact(job_id, f"{run_dir}/checkpoints/latest.pt")
    failed = json.loads(deployment.artifact(job_id, f"{trials[1]['result']['run_dir']}/summary.json"))
    assert failed["status"] == "FAILED" and failed["error"]["message"] in job["error"]
