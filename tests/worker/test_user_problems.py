"""Users' own problems through the whole service: REST submit, a real worker, real Ray, 2-process runs.

Yeast written to Parquet trains as a ``table``, with sharded optimizer state over 2 ranks, to exactly the metrics
of the built-in ``yeast`` problem; a sweep over a table with every task kind and missing labels succeeds; a file
with a bad cell fails the job with the file, column and row in its reason, and the worker goes on serving; the
example plugin package, pip-installed where the worker imports from, trains by its entry-point names; a problem
module shipped with ``flatmtl submit --code`` trains on 2 ranks that import it from Ray's working directory.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from flatmtl.service import code as code_archives
from flatmtl.workers.worker.service_demo import (
    api_call,
    api_client,
    create_demo_token,
    service_env,
)
from tests.problems.plugin_dists import pip_install_example
from tests.problems.tables import mixed_columns, mixed_tables, write, yeast_tables
from tests.service.test_code import _tar
from tests.worker.cluster import Service, code_token, require_ray, running_service, wait_until

WAVES = """
import torch

from flatmtl.workers.problems import Problem, Task, TaskTensorDataset
from flatmtl.workers.problems.tasks import Regression


class Waves(Problem):
    name = "waves"
    model_names = ("mlp",)
    default_model = "mlp"

    def __init__(self, *, seed: int = 0, size: int = 128) -> None:
        super().__init__(seed=seed)
        self.size = size
        self.tasks = [Task("sin", Regression()), Task("cos", Regression())]
        self.input_shape = (4,)

    def _load(self, split: str) -> TaskTensorDataset:
        generator = torch.Generator().manual_seed(self.seed + (split == "test"))
        inputs = torch.randn(self.size, 4, generator=generator)
        return TaskTensorDataset(inputs, [inputs.sum(1).sin(), inputs[:, 0].cos()])
"""

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    require_ray()
    out = tmp_path_factory.mktemp("table_service")
    token = create_demo_token(out, "tester")
    site = pip_install_example(out / "site")
    with running_service(out, service_env(out, PYTHONPATH=str(site)), token) as service:
        # the worker advertises once its Ray is up: from then on the API checks names against it
        wait_until(lambda: api_call(service.client, "GET", "/v1/problems")["problems"], 240, "the worker to advertise")
        yield service


def _spec(problem: str, options: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    return {
        "problem": problem,
        "problem_options": options,
        "model": "mmoe",
        "model_options": {"num_experts": 2, "expert_hidden": [16], "tower_hidden": 8},
        "epochs": 1,
        "batch_size": 32,
        "seed": 2,
        "processes": 2,
        **overrides,
    }


def _final(service: Service, job_id: int) -> dict[str, Any]:
    job = service.wait_ended(job_id, 300)
    assert job["state"] == "succeeded", job["error"]
    summary = json.loads((service.job_dir(job_id) / "run" / "summary.json").read_text())
    assert summary["processes"] == 2
    return summary["final"]


def _data(service: Service, name: str) -> Path:
    """A folder for a test's files inside the service's data roots (the default root: data_dir/datasets)."""
    folder = service.out / "datasets" / name
    folder.mkdir(parents=True)
    return folder


def test_yeast_as_parquet_trains_on_two_sharded_ranks_like_builtin_yeast(service: Service) -> None:
    options = yeast_tables(_data(service, "yeast"), ".parquet")
    table_job = service.submit(_spec("table", options, sharding="zero1"))
    yeast_job = service.submit(_spec("yeast", {}, sharding="zero1"))
    table, yeast = _final(service, table_job), _final(service, yeast_job)
    shared = [key for key in yeast if key.startswith("test/")]
    assert len(shared) == 14 * 5
    assert {key: table[key] for key in shared} == {key: yeast[key] for key in shared}


def test_a_sweep_over_a_table_with_missing_labels(service: Service) -> None:
    tables = mixed_tables(_data(service, "mixed"), ".parquet")
    base = _spec("table", tables, model="ple", model_options={"expert_hidden": [8]})
    sweep = {
        "kind": "sweep",
        "base": base,
        "space": {"optimizer.lr": {"type": "grid", "values": [0.001, 0.01]}},
        "metric": "test/price/rmse",
        "mode": "min",
    }
    job_id = service.submit(sweep)
    job = service.wait_ended(job_id, 400)
    assert job["state"] == "succeeded", job["error"]
    trials = api_call(service.client, "GET", f"/v1/jobs/{job_id}/trials")["items"]
    assert [t["state"] for t in trials] == ["succeeded"] * 2
    assert job["result"]["best_metric"] == min(t["best_metric"] for t in trials) > 0


def test_a_bad_cell_fails_the_job_naming_file_column_and_row(service: Service) -> None:
    folder = _data(service, "bad")
    options = mixed_tables(folder)
    columns = mixed_columns(400, 1)
    columns["price"] = [None if v is None else str(v) for v in columns["price"]]
    columns["price"][41] = "twelve"
    write(pa.table(columns), Path(options["train_file"]))
    job = service.wait_ended(service.submit(_spec("table", options)), 120)
    assert job["state"] == "failed"
    for fragment in (options["train_file"], "'price'", "row 42", "'twelve'"):
        assert fragment in job["error"], job["error"]
    nowhere = str(folder / "nowhere.csv")
    missing = service.wait_ended(service.submit(_spec("table", {**options, "test_file": nowhere})), 120)
    assert missing["state"] == "failed" and nowhere in missing["error"], missing["error"]
    outside = service.client.post("/v1/jobs", json={"spec": _spec("table", {**options, "test_file": "/etc/passwd"})})
    assert outside.status_code == 422
    assert outside.json()["errors"][0]["field"] == "spec.problem_options.test_file"
    assert service.worker.poll() is None


def test_the_example_plugin_trains_on_two_ranks_by_its_names(service: Service) -> None:
    spec = _spec("sines", {"train_size": 256}, model="two_towers", model_options={"hidden": 8})
    final = _final(service, service.submit(spec))
    assert final["test/sin/mae"] > 0 and final["test/cos/mae"] > 0


def test_the_api_knows_what_the_live_worker_runs(service: Service) -> None:
    listed = api_call(service.client, "GET", "/v1/problems")
    problems = {p["name"]: p for p in listed["problems"]}
    assert problems["sines"]["source"] == "plugin flatmtl-example-plugin (flatmtl_example.problem:Sines)"
    assert problems["sines"]["options"] == ["seed", "features", "train_size", "test_size"]
    assert problems["table"]["source"] == "built-in" and len(problems["table"]["workers"]) == 1
    unknown = service.client.post("/v1/jobs", json={"spec": _spec("sines", {}, model="three_towers")})
    assert unknown.status_code == 422
    error = unknown.json()["errors"][0]
    assert error["field"] == "spec.model" and error["value"] == "three_towers" and "two_towers" in error["allowed"]
    # A GPU job waits for a worker with GPUs (this one has none) instead of failing; a later CPU job runs.
    tiny_sines = {"model": "two_towers", "model_options": {"hidden": 4}}
    gpu_job = service.submit(_spec("sines", {"train_size": 64}, resources={"gpus": 1}, **tiny_sines))
    cpu_job = service.submit(_spec("sines", {"train_size": 64}, **tiny_sines))
    assert service.wait_ended(cpu_job, 300)["state"] == "succeeded"
    assert service.job(gpu_job)["state"] == "queued"
    api_call(service.client, "POST", f"/v1/jobs/{gpu_job}/cancel")


def _submit_with_code(service: Service, spec: dict[str, Any], code: Path) -> int:
    """``flatmtl submit SPEC --code DIR`` as a user runs it, with a token of the ``code`` scope."""
    token = code_token(service.out, "tester")
    path = service.out / f"{spec['problem'].replace(':', '-')}.json"
    path.write_text(json.dumps(spec))
    flatmtl = Path(sys.executable).parent / "flatmtl"
    command = [str(flatmtl), "submit", str(path), "--code", str(code), "--url", str(service.client.base_url)]
    done = subprocess.run([*command, "--token", token], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip())


def test_a_problem_shipped_with_the_job_trains_on_two_ranks(service: Service, tmp_path: Path) -> None:
    code = tmp_path / "code"
    (code / "waves" / "__pycache__").mkdir(parents=True)
    (code / "waves" / "__init__.py").write_text("")
    (code / "waves" / "problem.py").write_text(WAVES)
    (code / "waves" / "__pycache__" / "problem.cpython-311.pyc").write_bytes(b"not python")
    spec = {"problem": "waves.problem:Waves", "problem_options": {"size": 96}, "epochs": 1, "batch_size": 16}
    final = _final(service, _submit_with_code(service, {**spec, "processes": 2}, code))
    assert final["test/sin/mae"] > 0 and final["test/cos/mae"] > 0
    missing = _submit_with_code(service, {**spec, "problem": "waves.problem:Ripples"}, code)
    job = service.wait_ended(missing, 300)
    assert job["state"] == "failed"
    for fragment in ("'waves.problem'", "'Ripples'", "no attribute"):
        assert fragment in job["error"], job["error"]
    # An archive that reached the data directory by other means is checked again by the worker.
    escaping = _tar({"../outside.py": b"X = 1\n"})
    digest = code_archives.digest(escaping)
    stored = code_archives.archive_path(service.out / "artifacts", digest)
    stored.write_bytes(escaping)
    with api_client(str(service.client.base_url), code_token(service.out, "tester")) as shipper:
        refused = api_call(shipper, "POST", "/v1/jobs", json={"spec": {**spec, "code": digest}})["id"]
    job = service.wait_ended(refused, 120)
    assert job["state"] == "failed" and "'../outside.py' escapes" in job["error"], job["error"]
    assert service.worker.poll() is None
