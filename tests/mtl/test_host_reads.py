"""A step reads the device from the host as few times as it can: the losses travel with the first read (the
Gram a K x K solver needs, or the update's finiteness flag), a Gram aggregator's update needs no flag of its
own (F-MTL's sum of two does), and a NaN loss is still named as such.

On CUDA each read makes the host wait for the queued kernels (``benchmarks/gpu_check.py`` counts the syncs
themselves with ``torch.cuda.set_sync_debug_mode``). Here the oracle's own reads are counted, through the
step's ``oracle_class`` extension point, and every other op that would make a CUDA host wait is caught by a
dispatch mode that follows which tensors were computed from the step's inputs (those a CUDA run keeps on the
GPU) rather than from the host copies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor

from flatmtl.workers import mtl
from flatmtl.workers.mtl.errors import NonFiniteLossesError
from flatmtl.workers.mtl.oracle import GradientOracle
from tests.device_waits import DeviceWaits
from tests.mtl.models import tiny_problem


class CountedReads(GradientOracle):
    reads: ClassVar[list[int]] = []

    def host_values(self, *tensors: Tensor) -> list[list[float]]:
        type(self).reads.append(len(tensors))
        return super().host_values(*tensors)


@pytest.mark.parametrize(
    ("aggregator", "wrapper", "reads"),
    [
        ("mgda", "samo", 1),
        ("mean", "none", 1),
        ("mgda", "none", 1),
        ("upgrad", "fmtl", 3),
        ("mean", "sam", 1),
        ("graddrop", "none", 1),
        ("moco", "none", 1),
    ],
)
def test_a_step_outside_diagnostics_reads_the_host_once_per_gram_it_solves_on(
    aggregator: str, wrapper: str, reads: int
) -> None:
    model, x, targets = tiny_problem()
    hparams = {"rho_shared": 0.05, "rho_task": 0.05} if wrapper == "fmtl" else {}
    step = mtl.MTLStep.from_model(
        model, aggregator=aggregator, wrapper=wrapper, wrapper_hparams=hparams, diagnostics_every=10
    )
    step.oracle_class = CountedReads
    step(lambda: model.task_losses(x, targets))  # the first step is a diagnostics step
    CountedReads.reads = []
    record = step(lambda: model.task_losses(x, targets))
    assert len(CountedReads.reads) == reads
    assert record.losses is not None and record.host_losses is not None
    torch.testing.assert_close(record.host_losses, record.losses.double(), rtol=0, atol=0)
    if aggregator in ("mgda", "upgrad"):  # solved on the task gradients' Gram, which the record keeps
        assert record.host_gram is not None and record.gram is not None
        torch.testing.assert_close(record.host_gram, record.gram, rtol=0, atol=0)


@pytest.mark.parametrize("wrapper", ["samo", "none"])
def test_a_nan_loss_is_named_though_it_is_read_late(wrapper: str) -> None:
    """The losses are checked when first read, after the perturbed passes; what failed before (NaN gradients)
    is reported as the NaN loss that caused it."""
    model, x, targets = tiny_problem()
    step = mtl.MTLStep.from_model(model, aggregator="mgda", wrapper=wrapper, diagnostics_every=10)
    scale = torch.tensor([1.0, float("nan"), 1.0], dtype=torch.float64)
    with pytest.raises(NonFiniteLossesError) as caught:
        step(lambda: model.task_losses(x, targets) * scale)
    assert caught.value.indices == [1]
    assert "loss closure: losses contain NaN or inf" in str(caught.value)


def _closure(model: torch.nn.Module, x: Tensor, targets: Tensor, representation: bool) -> Callable[[], Any]:
    def closure() -> Any:
        if not representation:
            return model.task_losses(x, targets)
        features = model.trunk(x)
        predictions = torch.cat([head(features) for head in model.heads], dim=1)
        return ((predictions - targets) ** 2).mean(dim=0), features

    return closure


@pytest.mark.parametrize("aggregator", [method.name for method in mtl.methods("aggregator")])
def test_outside_its_host_reads_a_step_makes_no_op_that_waits_for_the_device(aggregator: str) -> None:
    representation = mtl.spec("aggregator", aggregator).factory.uses_representation
    for wrapper in (method.name for method in mtl.methods("wrapper")):
        model, x, targets = tiny_problem()
        hparams = {"rho_shared": 0.05, "rho_task": 0.05} if wrapper == "fmtl" else {}
        step = mtl.MTLStep.from_model(
            model, aggregator=aggregator, wrapper=wrapper, wrapper_hparams=hparams, diagnostics_every=10
        )
        closure = _closure(model, x, targets, representation)
        step(closure)  # the first step is a diagnostics step; the second's weighting draws from a past step too
        step(closure)
        with DeviceWaits([*model.parameters(), *model.buffers(), x, targets], step.generator) as watched:
            step(closure)
        assert watched.waits == [], (wrapper, watched.waits)


@pytest.mark.parametrize(("aggregator", "wrapper"), [("mean", "sam"), ("graddrop", "none"), ("mean", "samo")])
def test_a_non_finite_update_of_finite_losses_fails_the_step_from_its_one_read(aggregator: str, wrapper: str) -> None:
    """The update no Gram vouches for is checked by the flag read with the losses, not by the aggregator."""
    model, x, targets = tiny_problem()
    step = mtl.MTLStep.from_model(model, aggregator=aggregator, wrapper=wrapper, diagnostics_every=10)
    step.oracle_class = CountedReads
    step(lambda: model.task_losses(x, targets))
    weight = model.shared_parameters()[0]
    CountedReads.reads = []
    with pytest.raises(mtl.MethodError, match=rf"{aggregator}: update contain NaN or inf"):
        step(lambda: model.task_losses(x, targets) + torch.sqrt(weight.sum() * 0))  # adds 0; its gradient is NaN
    assert CountedReads.reads[0] == 1  # one copy: the update's flag, and the losses with it
