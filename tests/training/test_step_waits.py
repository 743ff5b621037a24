"""A training step outside diagnostics makes the host wait for the device once: the oracle's one read of the
losses with the Gram or the update's flag. The optimizer, the schedule and the step's metrics add no wait
(they use the host copies); ops that would wait on CUDA are found here on the CPU by ``DeviceWaits``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flatmtl.workers.engine import launch
from flatmtl.workers.training import RunDirectory, RunOptions
from flatmtl.workers.training.data import collate, to_device
from flatmtl.workers.training.trainer import RankContext, Trainer
from tests.device_waits import DeviceWaits
from tests.mtl.test_host_reads import CountedReads
from tests.training.specs import spec


def _second_step(folder: Path, method: dict, distributed: bool, **fields: object) -> tuple[list[str], int, dict]:
    """The waits and host reads of a trainer's second step (the first records diagnostics and creates the
    optimizer's state), and its metrics."""
    run = RunDirectory(folder)
    run.create()
    context = RankContext(distributed=distributed)
    trainer = Trainer(spec(method=method, **fields), run, RunOptions(device="cpu", plots=False), context)
    trainer.step.oracle_class = CountedReads
    inputs, targets = to_device(collate(trainer.train_data, list(range(32))), trainer.ctx.device, trainer.dtype)
    trainer._take_step(inputs, targets)
    CountedReads.reads = []
    roots = [*trainer.model.parameters(), *trainer.model.buffers(), inputs, *targets]
    with DeviceWaits(roots, trainer.step.generator) as watched:
        metrics = trainer._take_step(inputs, targets)
    return watched.waits, len(CountedReads.reads), metrics


@pytest.mark.parametrize(
    ("aggregator", "wrapper", "precision"),
    [("mgda", "samo", "fp32"), ("mgda", "samo", "bf16"), ("mean", "none", "fp32"), ("mean", "sam", "fp32")],
)
def test_a_training_step_waits_for_the_device_once(
    tmp_path: Path, aggregator: str, wrapper: str, precision: str
) -> None:
    method = {"weighting": "ew", "aggregator": aggregator, "wrapper": wrapper}
    waits, reads, metrics = _second_step(tmp_path, method, False, precision=precision)
    assert waits == [] and reads == 1
    tasks = ("top_left", "bottom_right")
    assert metrics["loss"] == pytest.approx(sum(metrics[f"loss/{task}"] for task in tasks) / len(tasks))


def _sharded_rank(rank: int, world_size: int, root: str) -> None:
    found = {}
    for sharding in ("zero1", "zero2", "zero3"):
        for aggregator, wrapper in (("mgda", "samo"), ("mean", "sam")):
            method = {"weighting": "ew", "aggregator": aggregator, "wrapper": wrapper}
            folder = Path(root) / f"{sharding}-{aggregator}-{wrapper}"
            waits, reads, _ = _second_step(folder, method, True, sharding=sharding, processes=world_size)
            found[folder.name] = [waits, reads]
    (Path(root) / "found.json").write_text(json.dumps(found))


@pytest.mark.slow
def test_a_sharded_training_step_waits_for_the_device_once(tmp_path: Path) -> None:
    """Aggregation and SAMO's layer-wise norms on shards add no wait: zero1-3 in a one-rank process group."""
    launch(_sharded_rank, 1, str(tmp_path), backend="gloo")
    found = json.loads((tmp_path / "found.json").read_text())
    assert len(found) == 6
    assert all(entry == [[], 1] for entry in found.values()), found
