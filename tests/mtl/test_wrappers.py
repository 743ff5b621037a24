"""Sharpness-aware wrappers (G-SAM, L-SAM, F-MTL, SAMO) against independent autograd computations.

References are written here from the papers' formulas with plain autograd on a second copy of the
model; the wrappers go through the oracle. Float64 throughout, so agreement is to rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor

from flatmtl.workers import mtl
from flatmtl.workers.mtl.base import Aggregator, GramAggregator
from flatmtl.workers.mtl.oracle import GradientOracle
from flatmtl.workers.mtl.wrappers.samo import central_differences
from tests.mtl.models import TinyHPS, tiny_problem

K = 3
SAM_WRAPPERS = tuple(spec.name for spec in mtl.methods("wrapper") if spec.name != "none")
AGGREGATORS = [spec.name for spec in mtl.methods("aggregator")]
NONLINEAR = [name for name in AGGREGATORS if name != "mean"]
ZERO_RADIUS = {
    "sam": {"rho": 0.0},
    "g_sam": {"rho": 0.0},
    "l_sam": {"rho": 0.0},
    "fmtl": {"rho_shared": 0.0, "rho_task": 0.0},
    "samo": {"rho": 0.0},
}
POSITIVE_RADIUS = {
    "sam": {"rho": 0.3},
    "g_sam": {"rho": 0.3},
    "l_sam": {"rho": 0.3},
    "fmtl": {"rho_shared": 0.3, "rho_task": 0.1},
    "samo": {"rho": 0.3, "alpha": 0.5},
}


class UnitNormMean(GramAggregator):
    """Mean of the unit-normalized task gradients: a simple aggregator that is not linear in G."""

    method_name = "unit_norm_mean"

    def compute_weights(self, gram: Tensor, *, losses: Tensor | None, generator: torch.Generator | None) -> Tensor:
        return 1.0 / (gram.shape[0] * gram.diagonal().sqrt())


class EmaMean(Aggregator):
    """Stateful: returns the running average of the mean gradient, so mixing two streams would show."""

    method_name = "ema_mean"
    state_keys: ClassVar[tuple[str, ...]] = ("ema",)

    def __init__(self) -> None:
        self.ema: Tensor | None = None

    def aggregate(self, grads: Tensor, **_: Any) -> Tensor:
        mean = grads.mean(dim=0)
        self.ema = mean if self.ema is None else 0.5 * self.ema + 0.5 * mean
        return self.ema.clone()


def _step(
    wrapper: str, hparams: dict[str, Any] | None = None, aggregator: str | Aggregator = "mean", seed: int = 0
) -> tuple[TinyHPS, mtl.MTLStep]:
    model, x, targets = tiny_problem(K)
    step = mtl.MTLStep.from_model(model, aggregator=aggregator, wrapper=wrapper, wrapper_hparams=hparams, seed=seed)
    step(lambda: model.task_losses(x, targets))
    return model, step


def _grads(model: TinyHPS) -> list[Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def _flat(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _norm(tensors: Sequence[Tensor]) -> Tensor:
    return _flat(tensors).norm()


# ---- independent references ---------------------------------------------------------------------
class Reference:
    """The tiny problem on its own model copy, differentiated with plain autograd."""

    def __init__(self) -> None:
        self.model, self.x, self.targets = tiny_problem(K)
        self.shared = self.model.shared_parameters()
        self.heads = self.model.task_parameters()

    def losses(self) -> Tensor:
        return self.model.task_losses(self.x, self.targets)

    def task_grads(self, task: int) -> tuple[list[Tensor], list[Tensor]]:
        grads = torch.autograd.grad(self.losses()[task], [*self.shared, *self.heads[task]])
        return list(grads[: len(self.shared)]), list(grads[len(self.shared) :])

    def mean_grads(self) -> tuple[list[Tensor], list[list[Tensor]]]:
        params = [*self.shared, *(p for head in self.heads for p in head)]
        grads = list(torch.autograd.grad(self.losses().mean(), params))
        shared, rest = grads[: len(self.shared)], grads[len(self.shared) :]
        heads = []
        for head in self.heads:
            heads.append(rest[: len(head)])
            rest = rest[len(head) :]
        return shared, heads

    def at(self, params: Sequence[Tensor], offsets: Sequence[Tensor], fn: Callable[[], Any]) -> Any:
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, offset in zip(params, offsets, strict=True):
                p.add_(offset)
        try:
            return fn()
        finally:
            with torch.no_grad():
                for p, value in zip(params, saved, strict=True):
                    p.copy_(value)


def _sam_offsets(
    shared: list[Tensor], head: list[Tensor], rho_shared: float, rho_task: float, joint: bool
) -> list[Tensor]:
    if joint:
        factor = rho_shared / (_norm(shared + head) + 1e-12)
        return [g * factor for g in shared + head]
    shared_factor = rho_shared / (_norm(shared) + 1e-12)
    head_factor = rho_task / (_norm(head) + 1e-12)
    return [g * shared_factor for g in shared] + [g * head_factor for g in head]


def _reference_task_sam(rho_shared: float, rho_task: float, joint: bool) -> tuple[list, list, list]:
    """Per task: gradient at theta, SAM gradient at theta + eps_i (shared rows and head grads)."""
    ref = Reference()
    plain, sam, heads = [], [], []
    for task in range(K):
        shared_grad, head_grad = ref.task_grads(task)
        offsets = _sam_offsets(shared_grad, head_grad, rho_shared, rho_task, joint)
        params = [*ref.shared, *ref.heads[task]]
        sam_shared, sam_head = ref.at(params, offsets, lambda task=task: ref.task_grads(task))
        plain.append(_flat(shared_grad))
        sam.append(_flat(sam_shared))
        heads.append(sam_head)
    return plain, sam, heads


def _written(model: TinyHPS) -> tuple[Tensor, list[list[Tensor]]]:
    shared = _flat([p.grad for p in model.shared_parameters()])
    return shared, [[p.grad for p in head] for head in model.task_parameters()]


# ---- zero radius, restore ------------------------------------------------------------------------
@pytest.mark.parametrize("aggregator", AGGREGATORS)
@pytest.mark.parametrize("wrapper", SAM_WRAPPERS)
def test_zero_radius_is_the_plain_step(wrapper: str, aggregator: str) -> None:
    plain, _ = _step("none", aggregator=aggregator)
    wrapped, _ = _step(wrapper, ZERO_RADIUS[wrapper], aggregator=aggregator)
    for a, b in zip(_grads(plain), _grads(wrapped), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("wrapper", SAM_WRAPPERS)
def test_no_perturbation_leaks_into_parameters_or_batchnorm_statistics(wrapper: str) -> None:
    model, _ = _step(wrapper, POSITIVE_RADIUS[wrapper])
    reference, x, targets = tiny_problem(K)
    reference.task_losses(x, targets)  # the one unperturbed forward moves the running statistics once
    after = model.state_dict()
    for key, value in reference.state_dict().items():
        assert torch.equal(after[key], value), key


# ---- L-SAM and F-MTL against autograd ------------------------------------------------------------
def test_l_sam_matches_per_task_sam_reference() -> None:
    model, _ = _step("l_sam", {"rho": 0.3})
    _, sam, heads = _reference_task_sam(0.3, 0.3, joint=True)
    shared, written_heads = _written(model)
    torch.testing.assert_close(shared, torch.stack(sam).mean(0), rtol=0, atol=1e-12)
    for got, expected in zip(written_heads, heads, strict=True):
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["decomposed", "direct"])
def test_fmtl_matches_reference_and_heads_get_their_own_sam_gradient(mode: str) -> None:
    model, _ = _step("fmtl", {"rho_shared": 0.3, "rho_task": 0.1, "mode": mode})
    plain, sam, heads = _reference_task_sam(0.3, 0.1, joint=False)
    if mode == "direct":
        expected = torch.stack(sam).mean(0)
    else:
        loss_parts, flat_parts = torch.stack(plain), torch.stack(sam) - torch.stack(plain)
        expected = loss_parts.mean(0) + flat_parts.mean(0)
    shared, written_heads = _written(model)
    torch.testing.assert_close(shared, expected, rtol=0, atol=1e-12)
    for got, own in zip(written_heads, heads, strict=True):
        for a, b in zip(got, own, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_fmtl_direct_and_decomposed_agree_for_mean() -> None:
    direct, _ = _step("fmtl", {"rho_shared": 0.5, "rho_task": 0.5, "mode": "direct"})
    decomposed, _ = _step("fmtl", {"rho_shared": 0.5, "rho_task": 0.5, "mode": "decomposed"})
    for a, b in zip(_grads(direct), _grads(decomposed), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("aggregator", ["unit_norm_mean", *NONLINEAR])
def test_fmtl_direct_and_decomposed_differ_for_a_nonlinear_aggregator(aggregator: str) -> None:
    def build() -> str | Aggregator:
        return UnitNormMean() if aggregator == "unit_norm_mean" else aggregator

    hparams = {"rho_shared": 0.5, "rho_task": 0.5}
    direct, _ = _step("fmtl", {**hparams, "mode": "direct"}, aggregator=build())
    decomposed, _ = _step("fmtl", {**hparams, "mode": "decomposed"}, aggregator=build())
    shared_direct = _flat([p.grad for p in direct.shared_parameters()])
    shared_decomposed = _flat([p.grad for p in decomposed.shared_parameters()])
    assert (shared_direct - shared_decomposed).abs().max() > 1e-6
    for a, b in zip(direct.task_parameters(), decomposed.task_parameters(), strict=True):
        for p, q in zip(a, b, strict=True):
            assert torch.equal(p.grad, q.grad)


def test_fmtl_flat_parts_have_their_own_aggregator_state_which_checkpoints_and_resumes() -> None:
    hparams = {"rho_shared": 0.3, "rho_task": 0.1}
    model, x, targets = tiny_problem(K)
    step = mtl.MTLStep.from_model(model, aggregator=EmaMean(), wrapper="fmtl", wrapper_hparams=hparams)
    step(lambda: model.task_losses(x, targets))
    plain, sam, _ = _reference_task_sam(0.3, 0.1, joint=False)
    loss_mean, sam_mean = torch.stack(plain).mean(0), torch.stack(sam).mean(0)
    flat_aggregator = step.wrapper.flat_aggregator
    assert isinstance(flat_aggregator, EmaMean) and flat_aggregator is not step.aggregator
    torch.testing.assert_close(step.aggregator.ema, loss_mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(flat_aggregator.ema, sam_mean - loss_mean, rtol=0, atol=1e-12)

    checkpoint = step.state_dict()
    resumed_model, _, _ = tiny_problem(K)
    resumed = mtl.MTLStep.from_model(resumed_model, aggregator=EmaMean(), wrapper="fmtl", wrapper_hparams=hparams)
    resumed.load_state_dict(checkpoint)
    for m, s in ((model, step), (resumed_model, resumed)):
        m.zero_grad()
        s(lambda m=m: m.task_losses(x, targets))
    for a, b in zip(_grads(model), _grads(resumed_model), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(resumed.wrapper.flat_aggregator.ema, step.wrapper.flat_aggregator.ema)


# ---- perturbation radii, seen from inside the closure -----------------------------------------------
class Probe:
    """A closure that records the parameters it was evaluated at."""

    def __init__(self, model: TinyHPS, x: Tensor, targets: Tensor) -> None:
        self.model, self.x, self.targets = model, x, targets
        self.points: list[tuple[Tensor, list[Tensor]]] = []

    def __call__(self) -> Tensor:
        shared = _flat([p.detach() for p in self.model.shared_parameters()]).clone()
        heads = [_flat([p.detach() for p in head]).clone() for head in self.model.task_parameters()]
        self.points.append((shared, heads))
        return self.model.task_losses(self.x, self.targets)

    def offsets(self, index: int) -> tuple[Tensor, list[Tensor]]:
        (shared0, heads0), (shared, heads) = self.points[0], self.points[index]
        return shared - shared0, [h - h0 for h, h0 in zip(heads, heads0, strict=True)]


def _probed(wrapper: str, hparams: dict[str, Any]) -> Probe:
    model, x, targets = tiny_problem(K)
    probe = Probe(model, x, targets)
    step = mtl.MTLStep.from_model(model, wrapper=wrapper, wrapper_hparams=hparams)
    step.probes = None  # one forward per point, so the closure sees each point (batched: tests/mtl/test_probes.py)
    step(probe)
    return probe


@pytest.mark.parametrize("adaptive", [False, True])
def test_fmtl_perturbs_shared_and_head_parameters_by_their_own_radii(adaptive: bool) -> None:
    eta = 0.01
    probe = _probed("fmtl", {"rho_shared": 0.3, "rho_task": 0.07, "adaptive": adaptive, "eta": eta})
    assert len(probe.points) == 1 + K
    shared0, heads0 = probe.points[0]
    for task in range(K):
        shared, heads = probe.offsets(1 + task)
        if adaptive:  # ASAM's ball is ||offset / (|theta| + eta)|| <= rho
            shared, heads = (
                shared / (shared0.abs() + eta),
                [h / (h0.abs() + eta) for h, h0 in zip(heads, heads0, strict=True)],
            )
        torch.testing.assert_close(shared.norm(), torch.tensor(0.3, dtype=torch.float64), rtol=1e-9, atol=0)
        torch.testing.assert_close(heads[task].norm(), torch.tensor(0.07, dtype=torch.float64), rtol=1e-9, atol=0)
        assert all(heads[other].abs().max() == 0 for other in range(K) if other != task)


def test_l_sam_and_g_sam_radii_are_joint_over_the_perturbed_parameters() -> None:
    probe = _probed("l_sam", {"rho": 0.2})
    for task in range(K):
        shared, heads = probe.offsets(1 + task)
        torch.testing.assert_close(torch.cat([shared, heads[task]]).norm().item(), 0.2, rtol=1e-9, atol=0)
        assert all(heads[other].abs().max() == 0 for other in range(K) if other != task)
    probe = _probed("g_sam", {"rho": 0.2})
    assert len(probe.points) == 2
    shared, heads = probe.offsets(1)
    torch.testing.assert_close(torch.cat([shared, *heads]).norm().item(), 0.2, rtol=1e-9, atol=0)


@pytest.mark.parametrize("shared_directions", [False, True])
def test_samo_probes_are_antisymmetric_in_place_moves_of_shared_parameters(shared_directions: bool) -> None:
    directions, mu = 2, 0.01
    hparams = {"rho": 0.2, "mu": mu, "directions": directions, "shared_directions": shared_directions}
    probe = _probed("samo", hparams)
    spsa_calls = 2 * directions * (1 if shared_directions else K)
    assert len(probe.points) == 1 + spsa_calls + K
    # Every probe first (+mu z for each task's directions, then -mu z for each), then one SAMO point per task.
    drawn = directions * (1 if shared_directions else K)
    for task in range(K):
        first = 1 + (0 if shared_directions else task * directions)
        for plus in range(first, first + directions):
            minus = plus + drawn
            up, up_heads = probe.offsets(plus)
            down, down_heads = probe.offsets(minus)
            torch.testing.assert_close(up, -down, rtol=0, atol=1e-15)
            assert up.abs().max() > 0
            assert all(h.abs().max() == 0 for h in [*up_heads, *down_heads])
        _, heads = probe.offsets(1 + spsa_calls + task)
        assert all(heads[other].abs().max() == 0 for other in range(K) if other != task)


# ---- SAMO ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("aggregator", AGGREGATORS)
def test_samo_with_alpha_one_is_g_sam(aggregator: str) -> None:
    g_sam, _ = _step("g_sam", {"rho": 0.3}, aggregator=aggregator)
    samo, _ = _step("samo", {"rho": 0.3, "alpha": 1.0}, aggregator=aggregator)
    for a, b in zip(_grads(g_sam), _grads(samo), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def _layer_rescaled(estimate: list[Tensor], reference: list[Tensor], normalization: str) -> list[Tensor]:
    if normalization == "none":
        return estimate
    if normalization == "global":
        return [e * (_norm(reference) / _norm(estimate)) for e in estimate]
    return [e * (r.norm() / e.norm()) for e, r in zip(estimate, reference, strict=True)]


@pytest.mark.parametrize("normalization", ["layerwise", "global", "none"])
def test_samo_matches_the_papers_equations_with_the_same_random_directions(normalization: str) -> None:
    rho, alpha, mu, seed = 0.3, 0.4, 1e-3, 7
    hparams = {"rho": rho, "alpha": alpha, "mu": mu, "normalization": normalization}
    model, _ = _step("samo", hparams, seed=seed)

    ref = Reference()
    g0, g0_heads = ref.mean_grads()
    heads_squared = sum(_norm(h).pow(2) for h in g0_heads)
    generator = torch.Generator().manual_seed(seed)
    sam_rows, sam_heads = [], []
    for task in range(K):
        z = torch.randn(sum(p.numel() for p in ref.shared), generator=generator, dtype=torch.float64)
        z_layers = list(z.split([p.numel() for p in ref.shared]))
        z_layers = [zl.view_as(p) for zl, p in zip(z_layers, ref.shared, strict=True)]
        with torch.no_grad():
            plus = ref.at(ref.shared, [mu * zl for zl in z_layers], ref.losses)[task]
            minus = ref.at(ref.shared, [-mu * zl for zl in z_layers], ref.losses)[task]
        estimate = [(plus - minus) / (2 * mu) * zl for zl in z_layers]
        local = _layer_rescaled(estimate, g0, normalization)
        direction = [alpha * g + (1 - alpha) * e for g, e in zip(g0, local, strict=True)]
        factor = rho / (torch.sqrt(_norm(direction).pow(2) + heads_squared) + 1e-12)
        offsets = [d * factor for d in direction] + [h * factor for h in g0_heads[task]]
        shared_grad, head_grad = ref.at(
            [*ref.shared, *ref.heads[task]], offsets, lambda task=task: ref.task_grads(task)
        )
        sam_rows.append(_flat(shared_grad))
        sam_heads.append(head_grad)

    shared, heads = _written(model)
    torch.testing.assert_close(shared, torch.stack(sam_rows).mean(0), rtol=0, atol=1e-10)
    for got, own in zip(heads, sam_heads, strict=True):
        for a, b in zip(got, own, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_spsa_estimate_is_unbiased_for_the_task_gradient() -> None:
    """E[(l(theta + mu z) - l(theta - mu z)) / (2 mu) z] = grad l for z ~ N(0, I), up to O(mu^2)."""
    torch.manual_seed(0)
    model = TinyHPS(K, hidden=3).double()  # few shared coordinates, so few draws resolve the mean
    x, targets = torch.randn(16, 6, dtype=torch.float64), torch.randn(16, K, dtype=torch.float64)
    step = mtl.MTLStep.from_model(model, seed=3)
    oracle = GradientOracle(
        lambda: model.task_losses(x, targets),
        step.shared,
        step.heads,
        step.weighting,
        step.aggregator,
        step.comm,
        step.generator,
        step.gradient_engine,
        step.buffers,
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    draws = 400
    samples = []
    with oracle.displaced() as move:
        for _ in range(draws):
            direction = oracle.random_direction()
            coefficients = central_differences(oracle, move, direction[None], mu=1e-5)[0]
            samples.append(direction * coefficients[:, None])
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    stacked = torch.stack(samples)  # [draws, K, P]
    mean, standard_error = stacked.mean(0), stacked.std(0) / draws**0.5
    num_params = stacked.shape[-1]
    for task in range(K):
        exact = _flat(torch.autograd.grad(model.task_losses(x, targets)[task], model.shared_parameters()))
        chi_square = ((mean[task] - exact) / standard_error[task]).pow(2).sum()
        band = num_params + 6 * (2 * num_params) ** 0.5
        assert chi_square < band
        # the draws resolve the gradient: an estimator off by a factor of two would land far outside the band
        assert (exact / standard_error[task]).pow(2).sum() > 3 * band


# ---- validation ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("wrapper", "name", "value"),
    [
        ("samo", "rho", -0.1),
        ("samo", "alpha", 1.5),
        ("samo", "alpha", -0.1),
        ("samo", "mu", 0.0),
        ("samo", "mu", -0.01),
        ("samo", "directions", 0),
        ("samo", "normalization", "per-row"),
        ("fmtl", "rho_shared", -1.0),
        ("fmtl", "rho_task", -1.0),
        ("fmtl", "mode", "sum"),
        ("l_sam", "rho", -0.5),
        ("g_sam", "rho", -0.5),
    ],
)
def test_bad_hyperparameters_raise_method_error_naming_the_parameter(wrapper: str, name: str, value: Any) -> None:
    with pytest.raises(mtl.MethodError, match=rf"{wrapper}\.{name}="):
        mtl.wrapper(wrapper, **{name: value})
