"""The step's contract on whole parameters: plain EW/mean equals the mean-loss gradient on shared
parameters, heads get their own task's gradient, SAM wrappers restore parameters exactly."""

from __future__ import annotations

import torch

from flatmtl.workers import mtl
from tests.mtl.models import tiny_problem


def test_plain_mean_step_is_mean_loss_gradient_and_heads_get_their_own_task() -> None:
    model, x, targets = tiny_problem()
    step = mtl.MTLStep.from_model(model)
    step(lambda: model.task_losses(x, targets))
    got = [p.grad.clone() for p in model.parameters()]

    reference, _, _ = tiny_problem()
    losses = reference.task_losses(x, targets)
    shared = torch.autograd.grad(losses.mean(), reference.shared_parameters(), retain_graph=True)
    heads = [torch.autograd.grad(losses[k], reference.task_parameters()[k], retain_graph=True) for k in range(3)]
    expected = [*shared, *(g for head in heads for g in head)]
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_sam_restores_parameters_and_batchnorm_statistics_bit_exactly() -> None:
    model, x, targets = tiny_problem()
    model.train()
    step = mtl.MTLStep.from_model(model, wrapper="sam", wrapper_hparams={"rho": 0.5, "adaptive": True})
    step(lambda: model.task_losses(x, targets))
    after_sam = {k: v.clone() for k, v in model.state_dict().items()}

    plain, _, _ = tiny_problem()
    plain.train()
    plain.task_losses(x, targets)  # the one unperturbed forward moves the running statistics once
    for key, value in plain.state_dict().items():
        assert torch.equal(after_sam[key], value), key


def test_sam_with_zero_radius_equals_plain_step() -> None:
    results = []
    for wrapper in ("none", "sam"):
        model, x, targets = tiny_problem()
        step = mtl.MTLStep.from_model(
            model, wrapper=wrapper, wrapper_hparams={"rho": 0.0} if wrapper == "sam" else None
        )
        step(lambda model=model, x=x, targets=targets: model.task_losses(x, targets))
        results.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
