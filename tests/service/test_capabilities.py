"""What live workers can run: advertised in the database, refused at submit when no live worker offers it, and
claimed only by a worker that can run it (a GPU job waits for a GPU worker)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from flatmtl.service import capabilities, queue
from flatmtl.service.capabilities import Capabilities
from flatmtl.service.db import Database
from flatmtl.service.errors import UnrunnableError
from flatmtl.service.specs.train import TrainSpec

T0 = datetime(2030, 1, 1, tzinfo=UTC)
LEASE = 30.0
BUILT_IN = {"source": "built-in", "options": ["seed"], "models": ["mlp"]}


def worker(gpus: float, *problems: str) -> Capabilities:
    return Capabilities(
        cpus=8,
        gpus=gpus,
        problems=[{"name": name, **BUILT_IN} for name in problems]
        + [{"name": "broken", "source": "plugin x (x:Y)", "error": "import failed"}],
        models=[{"name": "mlp", "source": "built-in", "options": ["hidden"]}],
    )


def spec(problem: str, **fields: object) -> TrainSpec:
    return TrainSpec.model_validate({"problem": problem, **fields})


def test_jobs_wait_for_a_worker_that_can_run_them(db: Database) -> None:
    cpu, gpu = worker(0, "yeast", "table"), worker(1, "yeast")
    gpu_job, _ = queue.submit(db, spec("yeast", resources={"gpus": 1}), now=T0)
    table_job, _ = queue.submit(db, spec("table"), now=T0)
    assert cpu.refusal(gpu_job.spec) == "the job asks for GPUs and this worker's cluster has none"
    assert gpu.refusal(table_job.spec) == "problem 'table' is not installed here"
    assert cpu.refusal({"base": spec("yeast", model="ple").model_dump()}) == "model 'ple' is not installed here"
    assert queue.claim(db, "gpu", LEASE, now=T0, refusal=gpu.refusal).job_id == gpu_job.id  # type: ignore[union-attr]
    assert queue.claim(db, "gpu", LEASE, now=T0, refusal=gpu.refusal) is None
    other_gpu_job, _ = queue.submit(db, spec("yeast", resources={"gpus": 1}), now=T0)
    claimed = queue.claim(db, "cpu", LEASE, now=T0, refusal=cpu.refusal)
    assert claimed is not None and claimed.job_id == table_job.id
    assert queue.claim(db, "cpu", LEASE, now=T0, refusal=cpu.refusal) is None  # the GPU job stays queued
    assert queue.claim(db, "gpu", LEASE, now=T0, refusal=gpu.refusal).job_id == other_gpu_job.id  # type: ignore[union-attr]


def test_only_live_workers_decide_what_the_api_accepts(db: Database) -> None:
    document = spec("sines").model_dump(mode="json")
    capabilities.check_runnable_somewhere(db, document, LEASE)  # no worker yet: the job may wait for one
    now = datetime.now(UTC)
    capabilities.advertise(db, "old", worker(0, "sines"), now=now - timedelta(seconds=3 * LEASE))
    capabilities.advertise(db, "a", worker(0, "yeast", "table"), now=now)
    capabilities.advertise(db, "b", worker(1, "yeast"), now=now)
    assert sorted(capabilities.live(db, LEASE)) == ["a", "b"]
    with pytest.raises(UnrunnableError) as caught:
        capabilities.check_runnable_somewhere(db, document, LEASE)
    assert (caught.value.field, caught.value.value, caught.value.allowed) == ("spec.problem", "sines", "table, yeast")
    sweep = {"kind": "sweep", "base": spec("yeast", model="ple").model_dump(mode="json")}
    with pytest.raises(UnrunnableError) as caught:
        capabilities.check_runnable_somewhere(db, sweep, LEASE)
    assert (caught.value.field, caught.value.allowed) == ("spec.base.model", "mlp")
    capabilities.check_runnable_somewhere(db, spec("table", model="mlp").model_dump(mode="json"), LEASE)
    listed = capabilities.catalog(db, LEASE)
    assert [(p["name"], p["workers"]) for p in listed["problems"]] == [
        ("broken", ["a", "b"]),
        ("table", ["a"]),
        ("yeast", ["a", "b"]),
    ]
    capabilities.retire(db, "a")
    assert sorted(capabilities.live(db, LEASE)) == ["b"]
