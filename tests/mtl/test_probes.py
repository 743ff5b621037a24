"""Batched forward-only probes: the same losses and the same SAMO step as one forward per point."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from flatmtl.workers import mtl
from tests.mtl.models import TinyHPS

K = 3


def _problem(batch_norm: bool) -> tuple[TinyHPS, Tensor, Tensor]:
    torch.manual_seed(0)
    model = TinyHPS(K, batch_norm=batch_norm).double()
    return model, torch.randn(16, 6, dtype=torch.float64), torch.randn(16, K, dtype=torch.float64)


def test_batched_probes_give_the_losses_at_each_point_and_leave_parameters_in_place() -> None:
    model, x, targets = _problem(batch_norm=False)
    step = mtl.MTLStep.from_model(model, weighting="rlw", seed=1)
    oracle = step.oracle(lambda: model.task_losses(x, targets))
    oracle.losses()  # starts the step: RLW draws this step's weights
    offsets = torch.randn(5, oracle.shared.numel, dtype=torch.float64)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    with oracle.displaced() as move:
        batched = oracle.probe_losses(move, offsets, 1.0)
    assert step.probes is not None and step.probes.supported
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    for row, offset in enumerate(offsets):
        with oracle.perturbed(offset):
            expected = oracle.weighting.weigh(model.task_losses(x, targets)).detach()
        torch.testing.assert_close(batched[row], expected, rtol=0, atol=1e-12)


def _samo_grads(batch_norm: bool, batched: bool, hparams: dict[str, object]) -> tuple[list[Tensor], mtl.MTLStep]:
    model, x, targets = _problem(batch_norm)
    step = mtl.MTLStep.from_model(model, aggregator="mgda", wrapper="samo", wrapper_hparams=hparams, seed=4)
    if not batched:
        step.probes = None
    for _ in range(2):
        model.zero_grad()
        step(lambda: model.task_losses(x, targets))
    return [p.grad.clone() for p in model.parameters()], step


@pytest.mark.parametrize("shared_directions", [False, True])
def test_samo_with_batched_probes_takes_the_step_of_one_forward_per_point(shared_directions: bool) -> None:
    hparams = {"rho": 0.3, "alpha": 0.3, "directions": 2, "shared_directions": shared_directions}
    batched, step = _samo_grads(batch_norm=False, batched=True, hparams=hparams)
    assert step.probes is not None and step.probes.supported
    sequential, _ = _samo_grads(batch_norm=False, batched=False, hparams=hparams)
    for a, b in zip(batched, sequential, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_a_closure_vmap_cannot_batch_falls_back_to_one_forward_per_point() -> None:
    """BatchNorm in training mode updates running statistics in place, which vmap refuses."""
    hparams = {"rho": 0.3, "alpha": 0.3}
    fallback, step = _samo_grads(batch_norm=True, batched=True, hparams=hparams)
    assert step.probes is not None and not step.probes.supported
    sequential, _ = _samo_grads(batch_norm=True, batched=False, hparams=hparams)
    for a, b in zip(fallback, sequential, strict=True):
        assert torch.equal(a, b)


def test_models_with_convolutions_take_one_forward_per_point_from_the_start() -> None:
    model = TinyHPS(K, batch_norm=False)
    model.trunk.insert(0, torch.nn.Unflatten(1, (1, 6)))
    model.trunk.insert(1, torch.nn.Conv1d(1, 1, 1))
    model.trunk.insert(2, torch.nn.Flatten())
    step = mtl.MTLStep.from_model(model)
    assert step.probes is not None and not step.probes.supported
