"""Loss weightings against their definitions: RLW's distributions, stationarity of UW and IMTL-L, the
geometric-mean gradient of GLS, DWA's formula, the directions of GradNorm and FAMO, fixed weights within
a step, exact resumes and validation."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from flatmtl.workers import mtl
from flatmtl.workers.mtl.base import LossWeighting
from flatmtl.workers.mtl.errors import MethodError
from flatmtl.workers.mtl.random_weights import DISTRIBUTIONS, sample_simplex_weights
from tests.mtl.models import tiny_problem


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def weights_of(weighting: LossWeighting, losses: Tensor) -> Tensor:
    """The effective weights d weigh(L)_i / d L_i (every method here is a per-task scaling)."""
    losses = losses.detach().clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(weighting.weigh(losses).sum(), losses)
    return gradient


# ---- RLW and the shared distributions ----------------------------------------------------------------


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_random_weights_have_uniform_expectation_and_the_papers_support(distribution: str) -> None:
    num_tasks, draws = 4, 4000
    gen = generator(0)
    samples = torch.stack(
        [sample_simplex_weights(distribution, num_tasks, gen, dtype=torch.float64) for _ in range(draws)]
    )
    torch.testing.assert_close(samples.sum(dim=1), torch.ones(draws, dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.all(samples >= 0)
    standard_error = samples.std(dim=0) / math.sqrt(draws)
    assert torch.all((samples.mean(dim=0) - 1 / num_tasks).abs() < 4 * standard_error + 1e-12), distribution
    if distribution in ("normal", "uniform"):  # softmax: strictly positive
        assert torch.all(samples > 0)
    if distribution == "uniform":  # softmax of U(0, 1): any two weights differ by a factor below e
        assert float((samples.max(dim=1).values / samples.min(dim=1).values).max()) < math.e
    if distribution == "dirichlet":  # Dir(1,...,1) marginal is Beta(1, K-1): E[w^2] = 2 / (K (K + 1))
        second = samples.pow(2).mean(dim=0)
        error = samples.pow(2).std(dim=0) / math.sqrt(draws)
        assert torch.all((second - 2 / (num_tasks * (num_tasks + 1))).abs() < 4 * error)
    if distribution == "bernoulli":  # 1/m on the m >= 1 tasks drawn, 0 elsewhere
        chosen = samples > 0
        assert torch.all(chosen.any(dim=1))
        torch.testing.assert_close(
            samples[chosen], (1 / chosen.sum(dim=1, keepdim=True).double()).expand_as(samples)[chosen]
        )
    if distribution == "constrained_bernoulli":  # exactly one task with weight 1
        assert torch.all((samples == 1).sum(dim=1) == 1) and torch.all((samples == 0).sum(dim=1) == num_tasks - 1)


def test_rlw_weights_the_losses_with_one_draw_per_step_and_identical_seeds_agree() -> None:
    losses = torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64)
    first, second = mtl.loss_weighting("rlw"), mtl.loss_weighting("rlw")
    first.begin_step(losses, generator(5))
    second.begin_step(losses, generator(5))
    expected = sample_simplex_weights("normal", 3, generator(5), dtype=torch.float64)
    torch.testing.assert_close(weights_of(first, losses), expected, rtol=0, atol=1e-15)
    assert torch.equal(first.weigh(losses), second.weigh(losses))
    torch.testing.assert_close(weights_of(first, 2 * losses), expected, rtol=0, atol=1e-15)  # fixed in the step


def test_unknown_distribution_raises_naming_the_parameter() -> None:
    with pytest.raises(MethodError, match=r"rlw\.distribution='gamma'.*allowed: .*'dirichlet'"):
        mtl.loss_weighting("rlw", distribution="gamma")
    with pytest.raises(MethodError, match=r"distribution='gamma'"):
        sample_simplex_weights("gamma", 3, generator())


# ---- UW and IMTL-L -----------------------------------------------------------------------------------


def learned(name: str, num_tasks: int) -> LossWeighting:
    weighting = mtl.loss_weighting(name)
    weighting.setup(num_tasks, dtype=torch.float64)  # type: ignore[attr-defined]
    return weighting


@pytest.mark.parametrize(("name", "optimum"), [("uw", torch.log), ("imtl_l", lambda losses: -torch.log(losses))])
def test_learned_scales_are_stationary_at_their_closed_form_optimum(
    name: str, optimum: Callable[[Tensor], Tensor]
) -> None:
    losses = torch.tensor([0.3, 2.0, 4.0], dtype=torch.float64)
    weighting = learned(name, 3)
    (scales,) = weighting.parameters()
    with torch.no_grad():
        scales.copy_(optimum(losses))
    (gradient,) = torch.autograd.grad(weighting.weigh(losses).sum(), scales)
    torch.testing.assert_close(gradient, torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-12)
    # Away from the optimum the gradient is not zero (the test above is not vacuous).
    with torch.no_grad():
        scales.zero_()
    (gradient,) = torch.autograd.grad(weighting.weigh(losses).sum(), scales)
    assert float(gradient.abs().min()) > 1e-3
    # At the optimum the model sees weights 1 / L_i.
    with torch.no_grad():
        scales.copy_(optimum(losses))
    torch.testing.assert_close(weights_of(weighting, losses), 1 / losses, rtol=0, atol=1e-12)


def test_learned_scales_need_setup_and_restore_in_place() -> None:
    with pytest.raises(MethodError, match=r"uw: .*setup\(num_tasks\)"):
        mtl.loss_weighting("uw").parameters()
    weighting = learned("uw", 2)
    (scales,) = weighting.parameters()
    weighting.load_state_dict({"log_scales": torch.tensor([0.5, -1.0], dtype=torch.float64)})
    assert weighting.parameters()[0] is scales  # the optimizer keeps training the same tensor
    torch.testing.assert_close(scales.detach(), torch.tensor([0.5, -1.0], dtype=torch.float64))


# ---- SI and GLS --------------------------------------------------------------------------------------


def shared_gradient(model: torch.nn.Module, objective: Tensor) -> list[Tensor]:
    return list(torch.autograd.grad(objective, model.shared_parameters(), retain_graph=True))


def test_gls_weighted_gradients_sum_to_the_geometric_mean_gradient() -> None:
    model, x, targets = tiny_problem(num_tasks=3)
    losses = model.task_losses(x, targets)
    gls = mtl.loss_weighting("gls")
    gls.begin_step(losses.detach())
    got = shared_gradient(model, gls.weigh(losses).sum())
    expected = shared_gradient(model, losses.prod().pow(1 / 3))
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # The weights stay those of the step at perturbed parameters.
    torch.testing.assert_close(weights_of(gls, 1.5 * losses), weights_of(gls, losses), rtol=0, atol=1e-15)


def test_si_is_the_log_loss_at_the_step_and_keeps_its_weights_at_perturbed_parameters() -> None:
    model, x, targets = tiny_problem(num_tasks=3)
    losses = model.task_losses(x, targets)
    si = mtl.loss_weighting("si")
    si.begin_step(losses.detach())
    torch.testing.assert_close(si.weigh(losses), losses.log(), rtol=0, atol=1e-15)
    got = shared_gradient(model, si.weigh(losses).sum())
    expected = shared_gradient(model, losses.log().sum())
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(weights_of(si, 3 * losses), 1 / losses.detach(), rtol=0, atol=1e-15)
    with pytest.raises(MethodError, match=r"si: losses must be > 0"):
        si.begin_step(torch.tensor([1.0, 0.0, 2.0]))


# ---- DWA ---------------------------------------------------------------------------------------------


def test_dwa_follows_its_formula_on_a_hand_made_loss_history() -> None:
    dwa = mtl.loss_weighting("dwa", temperature=2.0)
    losses = torch.ones(3, dtype=torch.float64)
    epochs = [
        [torch.tensor([4.0, 2.0, 1.0]), torch.tensor([2.0, 2.0, 1.0])],  # mean (3, 2, 1)
        [torch.tensor([3.0, 1.0, 1.0]), torch.tensor([1.5, 1.0, 0.5])],  # mean (2.25, 1, 0.75)
    ]
    for epoch in epochs:
        for step_losses in epoch:
            dwa.begin_step(step_losses.double())
            torch.testing.assert_close(weights_of(dwa, losses), torch.ones(3, dtype=torch.float64))
        dwa.end_epoch()
    ratios = [2.25 / 3, 1 / 2, 0.75 / 1]
    exps = [math.exp(r / 2.0) for r in ratios]
    expected = torch.tensor([3 * e / sum(exps) for e in exps], dtype=torch.float64)
    got = weights_of(dwa, losses)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert float(got.sum()) == pytest.approx(3.0, abs=1e-12)


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_dwa_rejects_non_positive_temperature(temperature: float) -> None:
    with pytest.raises(MethodError, match=r"dwa\.temperature=.*allowed: float in \(0, inf\)"):
        mtl.loss_weighting("dwa", temperature=temperature)


# ---- GradNorm ----------------------------------------------------------------------------------------


def gradnorm_step(weighting: LossWeighting, losses: Tensor, norms: Tensor) -> Tensor:
    """One step: weights in use, observation of the weighted gradient norms, the next step's weights."""
    weighting.begin_step(losses)
    current = weights_of(weighting, losses)
    weighting.observe(losses, torch.diag((current * norms).pow(2)))
    assert torch.equal(weights_of(weighting, losses), current)  # unchanged until the next step
    weighting.begin_step(losses)
    return weights_of(weighting, losses)


def test_gradnorm_moves_weights_towards_equal_weighted_gradient_norms() -> None:
    gradnorm = mtl.loss_weighting("gradnorm", alpha=1.5, lr=0.01)
    losses = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)  # equal training rates: targets = mean norm
    updated = gradnorm_step(gradnorm, losses, torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64))
    assert float(updated.sum()) == pytest.approx(3.0, abs=1e-12)
    assert updated[0] < 1.0 < updated[1]  # the largest norm shrinks, the smallest grows


def test_gradnorm_favours_the_task_that_trains_slowest() -> None:
    gradnorm = mtl.loss_weighting("gradnorm", alpha=1.5, lr=0.01)
    gradnorm.begin_step(torch.ones(3, dtype=torch.float64))  # L(0) = 1
    later = torch.tensor([0.9, 0.3, 0.3], dtype=torch.float64)  # task 0 has the highest inverse training rate
    updated = gradnorm_step(gradnorm, later, torch.ones(3, dtype=torch.float64))
    assert float(updated.sum()) == pytest.approx(3.0, abs=1e-12)
    assert updated[0] > 1.0 > updated[1]
    torch.testing.assert_close(updated[1], updated[2])


def test_gradnorm_stays_stable_with_large_gradient_norms_at_the_default_rate() -> None:
    gradnorm = mtl.loss_weighting("gradnorm")
    losses = torch.ones(3, dtype=torch.float64)  # equal training rates: the weighted norms should equalize
    raw_norms = torch.tensor([45.0, 5.0, 20.0], dtype=torch.float64)
    for _ in range(300):
        weights = gradnorm_step(gradnorm, losses, raw_norms)
    assert float(weights.min()) > 0.05  # no weight collapsed to the floor
    weighted = weights * raw_norms
    assert float(weighted.max() / weighted.min()) < 1.5  # and the weighted norms came together


def test_gradnorm_observes_the_norms_of_the_weighted_task_gradients_in_a_step() -> None:
    model, x, targets = tiny_problem(num_tasks=3)
    step = mtl.MTLStep.from_model(model, weighting="gradnorm")
    step.weighting.weights = torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64)
    step(lambda: model.task_losses(x, targets))
    losses = model.task_losses(x, targets)
    expected = torch.stack(
        [
            torch.cat([g.reshape(-1) for g in shared_gradient(model, weight * loss)]).norm()
            for weight, loss in zip([0.5, 1.0, 1.5], losses, strict=True)
        ]
    )
    torch.testing.assert_close(step.weighting.pending_norms, expected.detach(), rtol=1e-10, atol=1e-12)


# ---- FAMO --------------------------------------------------------------------------------------------


def test_famo_keeps_uniform_logits_when_every_log_loss_falls_equally() -> None:
    famo = mtl.loss_weighting("famo", lr=0.5, weight_decay=0.01)
    losses = torch.tensor([2.0, 0.5, 8.0], dtype=torch.float64)
    for step in range(4):
        current = losses * 0.8**step
        famo.begin_step(current)
        shares = 1 / current
        torch.testing.assert_close(weights_of(famo, current), shares / shares.sum(), rtol=0, atol=1e-15)
    torch.testing.assert_close(famo.state_dict()["logits"], torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-15)


def test_famo_logit_step_is_the_softmax_gradient_of_the_loss_decrease() -> None:
    lr, decay = 0.3, 0.1
    famo = mtl.loss_weighting("famo", lr=lr, weight_decay=decay)
    before = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    after = torch.tensor([0.5, 1.9, 3.0], dtype=torch.float64)  # task 0 falls fastest
    famo.load_state_dict(
        {"logits": torch.tensor([0.2, -0.1, 0.0], dtype=torch.float64), "previous_losses": before, "weights": None}
    )
    logits = torch.tensor([0.2, -0.1, 0.0], dtype=torch.float64, requires_grad=True)
    initial = torch.softmax(logits.detach(), dim=0)
    decrease = before.log() - after.log()
    (gradient,) = torch.autograd.grad(torch.softmax(logits, dim=0) @ decrease, logits)
    expected = logits.detach() - lr * (gradient + decay * logits.detach())
    famo.begin_step(after)
    torch.testing.assert_close(famo.state_dict()["logits"], expected, rtol=0, atol=1e-15)
    change = torch.softmax(expected, dim=0) / initial
    assert change[0] < 1.0 < change[2]  # the fastest-falling task loses weight, the flat one gains


# ---- state round trips -------------------------------------------------------------------------------


def drive(weighting: LossWeighting, seed: int, steps: int, offset: int = 0) -> Tensor:
    """Feed a fixed synthetic sequence of losses, Grams and epoch ends; return the last step's weights."""
    torch.manual_seed(seed)
    sequence = [(torch.rand(3, dtype=torch.float64) + 0.5, torch.rand(3, 3, dtype=torch.float64)) for _ in range(9)]
    weights = torch.empty(0)
    for index in range(offset, offset + steps):
        losses, root = sequence[index]
        weighting.begin_step(losses, generator(index))
        weights = weights_of(weighting, losses)
        weighting.observe(losses, root @ root.T)
        if index % 2 == 1:
            weighting.end_epoch()
    return weights


@pytest.mark.parametrize(
    ("name", "hparams"),
    [
        ("dwa", {}),
        ("famo", {"lr": 0.5}),
        ("gradnorm", {"lr": 0.1}),
        ("rlw", {"distribution": "dirichlet"}),
        ("si", {}),
        ("gls", {}),
        ("uw", {}),
        ("imtl_l", {}),
    ],
)
def test_restored_weighting_takes_the_identical_next_step(name: str, hparams: dict[str, object]) -> None:
    original = mtl.loss_weighting(name, **hparams)
    if original.state_keys == ("log_scales",):
        original.setup(3, dtype=torch.float64)  # type: ignore[attr-defined]
        with torch.no_grad():
            original.parameters()[0].copy_(torch.tensor([0.3, -0.2, 0.1]))
    drive(original, seed=1, steps=6)
    restored = mtl.loss_weighting(name, **hparams)
    restored.load_state_dict(original.state_dict())
    assert torch.equal(drive(original, seed=1, steps=2, offset=6), drive(restored, seed=1, steps=2, offset=6))


@pytest.mark.parametrize(
    ("name", "hparams", "parameter"),
    [
        ("famo", {"lr": 0.0}, "famo.lr"),
        ("famo", {"weight_decay": -0.1}, "famo.weight_decay"),
        ("gradnorm", {"alpha": -1.0}, "gradnorm.alpha"),
        ("gradnorm", {"lr": 0.0}, "gradnorm.lr"),
    ],
)
def test_bad_hyper_parameters_raise_naming_the_parameter(name: str, hparams: dict[str, object], parameter: str) -> None:
    with pytest.raises(MethodError, match=parameter.replace(".", r"\.")):
        mtl.loss_weighting(name, **hparams)
