"""A training step outside diagnostics makes the host wait for the device once: the oracle's one read of the
losses with the Gram or the update's flag. The optimizer, the schedule and the step's metrics add no wait
(they use the host copies); ops that would wait on CUDA are found here on the CPU by ``DeviceWaits``."""

from __future__ import annotations

from pathlib import Path

import pytest

from flatmtl.workers.training import RunDirectory, RunOptions
from flatmtl.workers.training.data import collate, to_device
from flatmtl.workers.training.trainer import RankContext, Trainer
from tests.device_waits import DeviceWaits
from tests.mtl.test_host_reads import CountedReads
from tests.training.specs import spec


@pytest.mark.parametrize(
    ("aggregator", "wrapper", "precision"),
    [("mgda", "samo", "fp32"), ("mgda", "samo", "bf16"), ("mean", "none", "fp32"), ("mean", "sam", "fp32")],
)
def test_a_training_step_waits_for_the_device_once(
    tmp_path: Path, aggregator: str, wrapper: str, precision: str
) -> None:
    folder = RunDirectory(tmp_path)
    folder.create()
    method = {"weighting": "ew", "aggregator": aggregator, "wrapper": wrapper}
    trainer = Trainer(
        spec(method=method, precision=precision), folder, RunOptions(device="cpu", plots=False), RankContext()
    )
    trainer.step.oracle_class = CountedReads
    inputs, targets = to_device(collate(trainer.train_data, list(range(32))), trainer.ctx.device, trainer.dtype)
    trainer._take_step(inputs, targets)  # the first step records diagnostics and creates the optimizer's state
    CountedReads.reads = []
    roots = [*trainer.model.parameters(), *trainer.model.buffers(), inputs, *targets]
    with DeviceWaits(roots, trainer.step.generator) as watched:
        metrics = trainer._take_step(inputs, targets)
    assert watched.waits == []
    assert len(CountedReads.reads) == 1
    assert metrics["loss"] == pytest.approx(sum(metrics[f"loss/{task}"] for task in trainer.tasks) / len(trainer.tasks))
