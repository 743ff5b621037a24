"""Gram-based aggregators checked against their definitions on sampled gradient matrices of controlled
rank: optimality (KKT) conditions, closed forms for two tasks, the defining equations, invariances,
and agreement of the Gram path with the full-matrix path."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from flatmtl.workers import mtl
from flatmtl.workers.mtl.aggregators.aligned_mtl import alignment_matrix
from flatmtl.workers.mtl.aggregators.imtl_g import impartial_weights
from flatmtl.workers.mtl.aggregators.mgda import min_norm_weights
from flatmtl.workers.mtl.aggregators.upgrad import dual_cone_projection_weights
from flatmtl.workers.mtl.base import GramAggregator

GRAM_METHODS = tuple(m.name for m in mtl.methods("aggregator") if issubclass(m.factory, GramAggregator))
"""Every registered aggregator whose update is ``weights(G G^T) @ G``, so a new one meets the shared properties."""
SCALE_DEPENDENT = {"fairgrad"}
"""Weights that move with the gradients' scale: FairGrad's fixed point (G G^T) w = w^(-1/alpha)."""


def task_matrix(num_tasks: int, dim: int, rank: int, seed: int, variant: str = "plain") -> Tensor:
    """[K, P] float64 gradients of the given rank, with unequal norms; ``variant`` adds a hard case."""
    generator = torch.Generator().manual_seed(seed)
    left = torch.randn(num_tasks, rank, generator=generator, dtype=torch.float64)
    grads = left @ torch.randn(rank, dim, generator=generator, dtype=torch.float64)
    grads = grads * torch.rand(num_tasks, 1, generator=generator, dtype=torch.float64).mul(3.0).add(0.2)
    if variant == "near_parallel":
        grads[1] = 1.7 * grads[0] + 1e-3 * grads[0].norm() * torch.randn(dim, generator=generator, dtype=torch.float64)
    elif variant == "duplicate":
        grads[1] = grads[0]
    elif variant == "zero":
        grads[-1] = 0.0
    return grads


# (K, P, rank, variant): full rank, rank-deficient (rank < K), near-parallel, duplicated and zero gradients.
CASES = [
    (2, 5, 2, "plain"),
    (2, 8, 1, "plain"),
    (3, 12, 3, "plain"),
    (4, 20, 4, "near_parallel"),
    (5, 7, 3, "plain"),
    (5, 30, 5, "plain"),
    (6, 40, 6, "plain"),
    (6, 9, 2, "plain"),
    (4, 10, 4, "duplicate"),
    (4, 10, 4, "zero"),
    (3, 6, 1, "plain"),
]
FULL_RANK = [case for case in CASES if case[2] == case[0] and case[3] in ("plain", "near_parallel")]


def case_matrix(case: tuple[int, int, int, str], seed: int = 0) -> Tensor:
    num_tasks, dim, rank, variant = case
    return task_matrix(num_tasks, dim, rank, seed=100 * seed + 7 * num_tasks + dim, variant=variant)


def gram_of(grads: Tensor) -> Tensor:
    return grads @ grads.T


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def draws_at_random(name: str) -> bool:
    """Whether the method's weights depend on its generator (random task order or random weights)."""
    gram = gram_of(task_matrix(4, 16, 3, 9))
    losses = torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=torch.float64)
    first, second = (mtl.aggregator(name).weights(gram, losses=losses, generator=seeded(s)) for s in (0, 1))
    return not torch.equal(first, second)


def case_id(case: tuple[int, int, int, str]) -> str:
    return "K{}-P{}-r{}-{}".format(*case)


# ---- MGDA -------------------------------------------------------------------------------------------


def mgda_divisors(grads: Tensor, losses: Tensor, normalization: str) -> Tensor:
    norms = grads.norm(dim=1)
    norms = torch.where(norms > 0, norms, torch.ones_like(norms))
    return {"none": torch.ones_like(norms), "l2": norms, "loss": losses, "loss+": losses * norms}[normalization]


@pytest.mark.parametrize("normalization", ["none", "l2", "loss", "loss+"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_mgda_satisfies_min_norm_kkt_conditions(case: tuple[int, int, int, str], normalization: str) -> None:
    grads = case_matrix(case)
    losses = torch.linspace(0.3, 2.0, grads.shape[0], dtype=torch.float64)
    weights = mtl.aggregator("mgda", normalization=normalization).weights(gram_of(grads), losses=losses)
    divisors = mgda_divisors(grads, losses, normalization)
    simplex = weights * divisors  # weights of the normalized gradients
    normalized = grads / divisors.unsqueeze(1)
    gram = gram_of(normalized)
    scale = float(gram.diagonal().max())
    gradient = gram @ simplex  # half the gradient of w^T M w
    level = float(simplex @ gradient)  # ||min-norm point||^2, the multiplier of sum(w) = 1
    assert float(simplex.min()) >= -1e-12
    assert float(simplex.sum()) == pytest.approx(1.0, abs=1e-12)
    support = simplex > 1e-9
    assert float((gradient[support] - level).abs().max()) <= 1e-8 * scale  # stationarity on the support
    assert float((gradient - level).min()) >= -1e-8 * scale  # dual feasibility off the support
    assert float((simplex * (gradient - level)).abs().max()) <= 1e-8 * scale  # complementary slackness


@pytest.mark.parametrize("seed", range(6))
def test_mgda_two_tasks_closed_form(seed: int) -> None:
    grads = task_matrix(2, 6, 2, seed)
    gram = gram_of(grads)
    (a, c), (_, b) = gram.tolist()
    first = min(max((b - c) / (a + b - 2 * c), 0.0), 1.0)
    weights = mtl.aggregator("mgda").weights(gram)
    torch.testing.assert_close(weights, torch.tensor([first, 1 - first], dtype=torch.float64), rtol=0, atol=1e-12)


def test_mgda_on_a_zero_gradient_gives_the_zero_update() -> None:
    grads = case_matrix((4, 10, 4, "zero"))
    for normalization in ("none", "l2"):
        update = mtl.aggregator("mgda", normalization=normalization)(grads)
        assert float(update.norm()) <= 1e-12


def test_mgda_loss_normalizations_need_positive_losses() -> None:
    grads = task_matrix(3, 8, 3, 0)
    aggregator = mtl.aggregator("mgda", normalization="loss")
    assert aggregator.needs_losses and not mtl.aggregator("mgda", normalization="l2").needs_losses
    with pytest.raises(mtl.MethodError, match="losses"):
        aggregator.weights(gram_of(grads))
    with pytest.raises(mtl.MethodError, match="normalization='loss'"):
        aggregator.weights(gram_of(grads), losses=torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64))


def test_mgda_ub_uses_the_representation_and_is_mgda_on_a_plain_matrix() -> None:
    grads = task_matrix(4, 15, 3, 1)
    upper_bound = mtl.aggregator("mgda_ub", normalization="l2")
    assert upper_bound.uses_representation and not mtl.aggregator("mgda").uses_representation
    torch.testing.assert_close(upper_bound(grads), mtl.aggregator("mgda", normalization="l2")(grads))


def test_mgda_ub_weighs_bf16_representation_gradients_by_a_float32_gram() -> None:
    """Autocast hands MGDA-UB bfloat16 gradients; nearly parallel ones make its weights hinge on
    ``|g_1 - g_2|^2``, far below bfloat16's resolution of Gram entries near 256."""
    from flatmtl.workers.mtl.aggregators.mgda_ub import MGDAUpperBound

    class SolvedWeights(MGDAUpperBound):
        """MGDA-UB that keeps the weights it solved for, to compare them with the definition's."""

        def compute_weights(self, gram: Tensor, *, losses: Tensor | None, generator: torch.Generator | None) -> Tensor:
            self.solved = super().compute_weights(gram, losses=losses, generator=generator)
            return self.solved

    noise = torch.randn(256, generator=torch.Generator().manual_seed(0))
    spread = 0.05 * (noise - noise.mean())  # orthogonal to the common part: interior weights near 1/2
    rows = torch.stack([1.0 + spread, 1.0 - spread]).to(torch.bfloat16)
    method = SolvedWeights(normalization="none")
    combined = method.combine_representation(
        [rows.view(2, 16, 16)], [rows[0]], losses=None, generator=None, reduce_gram=lambda gram: gram
    )
    assert combined[0].shape == (16, 16)
    exact = rows.double()
    expected = mtl.aggregator("mgda", normalization="none").weights(exact @ exact.T)
    torch.testing.assert_close(method.solved.double(), expected, rtol=0, atol=1e-4)
    coarse = mtl.aggregator("mgda", normalization="none").weights((rows @ rows.T).double())
    assert float((coarse - expected).abs().max()) > 0.01  # what a bfloat16 Gram gave


# ---- IMTL-G, ConFIG ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", FULL_RANK, ids=case_id)
def test_imtl_g_projects_equally_on_every_unit_gradient(case: tuple[int, int, int, str]) -> None:
    grads = case_matrix(case)
    weights = mtl.aggregator("imtl_g").weights(gram_of(grads))
    projections = (grads / grads.norm(dim=1, keepdim=True)) @ (weights @ grads)
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-10)
    torch.testing.assert_close(projections, projections.mean().expand_as(projections), rtol=1e-7, atol=0)


@pytest.mark.parametrize("case", FULL_RANK, ids=case_id)
def test_config_has_equal_cosines_and_the_summed_projection_length(case: tuple[int, int, int, str]) -> None:
    grads = case_matrix(case)
    update = mtl.aggregator("config").weights(gram_of(grads)) @ grads
    direction = update / update.norm()
    cosines = (grads / grads.norm(dim=1, keepdim=True)) @ direction
    torch.testing.assert_close(cosines, cosines.mean().expand_as(cosines), rtol=1e-7, atol=0)
    assert float(cosines.min()) > 0.0
    assert float(update.norm()) == pytest.approx(float((grads @ direction).sum()), rel=1e-9)


# ---- Nash-MTL, FairGrad -----------------------------------------------------------------------------


def common_descent_matrix(num_tasks: int, dim: int, rank: int, seed: int) -> Tensor:
    """[K, P] gradients of rank ``rank`` (< K allowed) sharing a descent direction ``u`` orthogonal to
    their other components (``<g_i, u> > 0`` for all i), so the bargaining equation has a finite solution."""
    generator = torch.Generator().manual_seed(seed)
    grads = task_matrix(num_tasks, dim, rank - 1, seed)
    direction = torch.randn(dim, generator=generator, dtype=torch.float64)
    direction -= torch.linalg.lstsq(grads.T, direction).solution @ grads  # orthogonal to the rows
    scales = torch.rand(num_tasks, 1, generator=generator, dtype=torch.float64).add(0.3)
    grads = grads + scales * direction / direction.norm() * grads.norm(dim=1, keepdim=True).mean()
    assert int(torch.linalg.matrix_rank(grads)) == rank and bool((grads @ direction > 0).all())
    return grads


# (K, P, rank): rank-deficient gradients with a common descent direction.
DEFICIENT_WITH_SOLUTION = [(4, 12, 2), (5, 9, 3), (8, 20, 4), (14, 30, 6)]
NASH_CASES = [case_matrix(case) for case in FULL_RANK] + [
    common_descent_matrix(*case, seed=case[0]) for case in DEFICIENT_WITH_SOLUTION
]
NASH_IDS = [case_id(case) for case in FULL_RANK] + ["K{}-P{}-r{}-common".format(*c) for c in DEFICIENT_WITH_SOLUTION]


@pytest.mark.parametrize("grads", NASH_CASES, ids=NASH_IDS)
def test_nash_mtl_solves_the_bargaining_equation(grads: Tensor) -> None:
    gram = gram_of(grads)
    raw = mtl.aggregator("nash_mtl", normalize_gram=False).weights(gram)
    assert float(raw.min()) > 0.0
    torch.testing.assert_close(gram @ raw, 1.0 / raw, rtol=1e-7, atol=0)
    normalized = mtl.aggregator("nash_mtl").weights(gram)
    torch.testing.assert_close(gram / torch.linalg.matrix_norm(gram) @ normalized, 1.0 / normalized, rtol=1e-7, atol=0)
    torch.testing.assert_close(normalized, raw * torch.linalg.matrix_norm(gram).sqrt(), rtol=1e-7, atol=0)


@pytest.mark.parametrize("alpha", [0.3, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("case", FULL_RANK, ids=case_id)
def test_fairgrad_satisfies_the_alpha_fair_condition(case: tuple[int, int, int, str], alpha: float) -> None:
    gram = gram_of(case_matrix(case))
    weights = mtl.aggregator("fairgrad", alpha=alpha).weights(gram)
    assert float(weights.min()) > 0.0
    torch.testing.assert_close(gram @ weights, weights.pow(-1.0 / alpha), rtol=1e-7, atol=0)


def test_fairgrad_with_alpha_one_is_nash_mtl_on_the_raw_gram() -> None:
    gram = gram_of(task_matrix(5, 20, 5, 3))
    torch.testing.assert_close(
        mtl.aggregator("fairgrad", alpha=1.0).weights(gram),
        mtl.aggregator("nash_mtl", normalize_gram=False).weights(gram),
        rtol=1e-9,
        atol=0,
    )


@pytest.mark.parametrize("seed", range(4))
def test_nash_mtl_two_tasks_closed_form(seed: int) -> None:
    """For K = 2, alpha_i = 1 / (|g_i| sqrt(1 + cos)): the update is the unit gradients' sum over sqrt(1 + cos)."""
    grads = task_matrix(2, 6, 2, seed + 40)
    if seed % 2:
        grads[1] = -grads[1] + 0.3 * grads[0]  # conflicting pair
    norms = grads.norm(dim=1)
    cosine = float(grads[0] @ grads[1] / (norms[0] * norms[1]))
    expected = 1.0 / (norms * math.sqrt(1.0 + cosine))
    weights = mtl.aggregator("nash_mtl", normalize_gram=False).weights(gram_of(grads))
    torch.testing.assert_close(weights, expected, rtol=1e-10, atol=0)


@pytest.mark.parametrize("grads", NASH_CASES, ids=NASH_IDS)
def test_nash_mtl_warm_start_gives_the_cold_start_weights(grads: Tensor) -> None:
    gram = gram_of(grads)
    cold = mtl.aggregator("nash_mtl").weights(gram)
    generator = torch.Generator().manual_seed(5)
    for previous in (
        grads + 0.05 * grads.norm() * torch.randn(grads.shape, generator=generator, dtype=grads.dtype),
        torch.randn(grads.shape, generator=generator, dtype=grads.dtype),
    ):
        warm = mtl.aggregator("nash_mtl")
        warm.weights(gram_of(previous))
        torch.testing.assert_close(warm.weights(gram), cold, rtol=1e-9, atol=0)


def test_nash_mtl_zero_gradient_leaves_the_other_tasks_bargaining() -> None:
    grads = case_matrix((4, 10, 4, "zero"))
    gram = gram_of(grads)
    weights = mtl.aggregator("nash_mtl", normalize_gram=False).weights(gram)
    assert bool(torch.isfinite(weights).all()) and float(weights.min()) > 0.0
    others = gram[:3, :3]
    torch.testing.assert_close(others @ weights[:3], 1.0 / weights[:3], rtol=1e-7, atol=0)
    torch.testing.assert_close(weights[:3], mtl.aggregator("nash_mtl", normalize_gram=False).weights(others))


def test_nash_mtl_state_reuse_and_clipping() -> None:
    grams = [gram_of(task_matrix(3, 10, 3, seed)) for seed in range(4)]
    every = mtl.aggregator("nash_mtl", update_weights_every=2)
    fresh = [mtl.aggregator("nash_mtl").weights(gram) for gram in grams]
    got = [every.weights(gram) for gram in grams]
    torch.testing.assert_close(got[0], fresh[0])
    torch.testing.assert_close(got[1], got[0])  # reused between updates
    torch.testing.assert_close(got[2], fresh[2])

    first = mtl.aggregator("nash_mtl")
    first.weights(grams[0])
    resumed = mtl.aggregator("nash_mtl")
    resumed.load_state_dict(first.state_dict())
    assert set(first.state_dict()) == {"previous_weights", "calls"}
    torch.testing.assert_close(resumed.weights(grams[1]), first.weights(grams[1]), rtol=0, atol=0)

    grads = task_matrix(3, 10, 3, 0)
    clipped = mtl.aggregator("nash_mtl", max_norm=0.1)(grads)
    assert float(clipped.norm()) == pytest.approx(0.1, rel=1e-9)


# ---- CAGrad ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", [0.1, 0.4, 1.0, 2.5])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_cagrad_is_feasible_and_beats_random_feasible_points(case: tuple[int, int, int, str], c: float) -> None:
    grads = case_matrix(case)
    update = mtl.aggregator("cagrad", c=c, rescale="none")(grads)
    mean = grads.mean(dim=0)
    radius = c * float(mean.norm())
    assert float((update - mean).norm()) <= radius * (1 + 1e-9) + 1e-12
    worst = float((grads @ update).min())
    generator = torch.Generator().manual_seed(0)
    directions = torch.randn(4000, grads.shape[1], generator=generator, dtype=torch.float64)
    lengths = torch.rand(4000, 1, generator=generator, dtype=torch.float64).pow(0.2)  # mostly near the sphere
    points = mean + radius * lengths * directions / directions.norm(dim=1, keepdim=True)
    scale = float(grads.norm(dim=1).max()) ** 2
    assert float((points @ grads.T).min(dim=1).values.max()) <= worst + 1e-9 * scale


@pytest.mark.parametrize("c", [0.1, 0.4, 1.0, 2.5])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_cagrad_meets_a_dual_certificate(case: tuple[int, int, int, str], c: float) -> None:
    """Weak duality: ``min_i <g_i, d> <= F(w) = <G^T w, g0> + c ||g0|| ||G^T w||`` for every simplex ``w``;
    equality at a simplex point proves ``d`` optimal. The certificate is read off the answer (its weights
    minus the mean's, normalized) or, at a Pareto-stationary point, is MGDA's point (``F = 0``)."""
    grads = case_matrix(case)
    gram = gram_of(grads)
    weights = mtl.aggregator("cagrad", c=c, rescale="none").weights(gram)
    mean = grads.mean(dim=0)
    radius = c * float(mean.norm())

    def dual_value(simplex: Tensor) -> float:
        point = simplex @ grads
        return float(point @ mean) + radius * float(point.norm())

    offset = weights - 1.0 / grads.shape[0]
    certificates = [dual_value(mtl.aggregator("mgda").weights(gram))]
    if float(offset.sum()) > 0 and float(offset.min()) >= -1e-12:
        certificates.append(dual_value(offset.clamp_min(0) / offset.clamp_min(0).sum()))
    scale = float(grads.norm(dim=1).max()) ** 2
    assert float((grads @ (weights @ grads)).min()) >= min(certificates) - 1e-9 * scale


def test_cagrad_rescaling_and_zero_radius() -> None:
    grads = task_matrix(4, 12, 4, 5)
    gram = gram_of(grads)
    torch.testing.assert_close(
        mtl.aggregator("cagrad", c=0.0).weights(gram), torch.full((4,), 0.25, dtype=torch.float64)
    )
    plain = mtl.aggregator("cagrad", c=0.5, rescale="none").weights(gram)
    torch.testing.assert_close(mtl.aggregator("cagrad", c=0.5).weights(gram), plain / 1.25)
    torch.testing.assert_close(mtl.aggregator("cagrad", c=0.5, rescale="1+c").weights(gram), plain / 1.5)


# ---- UPGrad, Aligned-MTL ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_upgrad_is_non_conflicting_and_each_projection_is_optimal(case: tuple[int, int, int, str]) -> None:
    grads = case_matrix(case)
    gram = gram_of(grads)
    scale = float(gram.diagonal().max())
    update = mtl.aggregator("upgrad")(grads)
    assert float((grads @ update).min()) >= -1e-9 * scale
    projections = dual_cone_projection_weights(gram)
    identity = torch.eye(gram.shape[0], dtype=gram.dtype)
    for task in range(gram.shape[0]):
        weights = projections[task]
        slack = weights - identity[task]  # primal feasibility: v >= e_i
        products = gram @ weights  # the multipliers: G (G^T v) >= 0
        assert float(slack.min()) >= -1e-12
        assert float(products.min()) >= -1e-9 * scale
        assert float((slack * products).abs().max()) <= 1e-9 * scale * max(1.0, float(slack.abs().max()))


@pytest.mark.parametrize("seed", range(4))
def test_upgrad_batched_active_set_alone_solves_full_rank_projections(seed: int) -> None:
    from flatmtl.workers.mtl.aggregators import upgrad

    grads = task_matrix(12, 60, 12, seed)
    scaled = gram_of(grads) / float(gram_of(grads).diagonal().max())
    identity = torch.eye(12, dtype=torch.float64)
    weights = identity + upgrad._batched_active_set(scaled, identity)
    assert bool(upgrad._optimal(scaled, weights, identity).all())  # no projection needed the exact fallback
    slack, products = weights - identity, weights @ scaled
    assert float(slack.min()) >= 0 and float(products.min()) >= -1e-12
    assert float((slack * products).abs().max()) <= 1e-12


def test_upgrad_without_conflict_is_the_mean() -> None:
    grads = task_matrix(4, 10, 4, 2).abs()  # non-negative entries: no two gradients conflict
    torch.testing.assert_close(mtl.aggregator("upgrad")(grads), grads.mean(dim=0))


@pytest.mark.parametrize("scale", ["min", "median", "rmse"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_aligned_mtl_aligned_gradients_have_equal_singular_values(case: tuple[int, int, int, str], scale: str) -> None:
    grads = case_matrix(case)
    gram = gram_of(grads)
    aligned = alignment_matrix(gram, gram.dtype, scale) @ grads
    singular = torch.linalg.svdvals(aligned)
    nonzero = singular[singular > 1e-6 * float(singular.max())]
    original = torch.linalg.svdvals(grads)
    assert nonzero.numel() == int((original > 1e-6 * float(original.max())).sum())
    torch.testing.assert_close(nonzero, nonzero.max().expand_as(nonzero), rtol=1e-7, atol=0)
    if scale == "min":
        assert float(nonzero.max()) == pytest.approx(float(original[: nonzero.numel()].min()), rel=1e-7)
    weights = mtl.aggregator("aligned_mtl", scale=scale).weights(gram)
    torch.testing.assert_close(weights @ grads, aligned.sum(dim=0))


# ---- two tasks: closed forms against the general solvers ---------------------------------------------


def two_tasks(variant: str, seed: int) -> Tensor:
    """[2, 9] float64 gradients: random, or a hard case for a closed form (parallel, opposite, zero, ...)."""
    grads = task_matrix(2, 9, 2, seed, variant if variant in ("near_parallel", "duplicate", "zero") else "plain")
    if variant == "parallel":
        grads[1] = 2.5 * grads[0]
    elif variant == "opposite":
        grads[1] = -0.4 * grads[0]
    elif variant == "conflicting":
        grads[1] -= ((grads[1] @ grads[0]) / (grads[0] @ grads[0]) + 0.3) * grads[0]  # <g_1, g_2> = -0.3 |g_1|^2
    return grads


TWO_TASK_VARIANTS = ("plain", "conflicting", "near_parallel", "duplicate", "zero", "parallel", "opposite")
GENERAL_SOLVERS = {
    "mgda": min_norm_weights,
    "upgrad": lambda matrix: dual_cone_projection_weights(matrix).mean(dim=0),
    "imtl_g": impartial_weights,
}
"""The K-task solvers each aggregator uses for K != 2, on a float64 Gram."""


@pytest.mark.parametrize("variant", TWO_TASK_VARIANTS)
@pytest.mark.parametrize("name", sorted(GENERAL_SOLVERS))
def test_two_task_closed_forms_give_the_general_solvers_update(name: str, variant: str) -> None:
    for seed in range(3):
        grads = two_tasks(variant, seed)
        gram = gram_of(grads)
        closed = mtl.aggregator(name).weights(gram)
        if name == "imtl_g" and variant in ("duplicate", "parallel"):
            # one direction: every weighting summing to 1 is impartial; the closed form takes the limit of the others
            assert float(closed.sum()) == pytest.approx(1.0, abs=1e-12)
            continue
        general = GENERAL_SOLVERS[name](gram)
        scale = float(grads.norm(dim=1).max())
        torch.testing.assert_close(closed @ grads, general @ grads, rtol=0, atol=1e-9 * scale)
        single = mtl.aggregator(name).weights(gram.float())
        assert single.dtype == torch.float32
        torch.testing.assert_close(single.double() @ grads, general @ grads, rtol=0, atol=1e-5 * scale)


# ---- shared properties ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GRAM_METHODS)
@pytest.mark.parametrize("case", FULL_RANK, ids=case_id)
def test_permuting_tasks_permutes_weights(name: str, case: tuple[int, int, int, str]) -> None:
    if draws_at_random(name):
        pytest.skip(f"{name} draws a task order or weights at random: equivariant in distribution only")
    grads = case_matrix(case, seed=1)
    permutation = torch.randperm(grads.shape[0], generator=torch.Generator().manual_seed(4))
    weights = mtl.aggregator(name).weights(gram_of(grads))
    permuted = mtl.aggregator(name).weights(gram_of(grads[permutation]))
    torch.testing.assert_close(permuted, weights[permutation], rtol=1e-7, atol=1e-9 * float(weights.abs().max()))


@pytest.mark.parametrize("name", [name for name in GRAM_METHODS if name not in SCALE_DEPENDENT])
def test_scale_invariant_methods_ignore_the_gradients_scale(name: str) -> None:
    gram = gram_of(task_matrix(5, 20, 4, 6))
    losses = torch.tensor([0.5, 1.0, 1.5, 2.0, 2.5], dtype=torch.float64)
    torch.testing.assert_close(
        mtl.aggregator(name).weights(1e6 * gram, losses=losses, generator=seeded()),
        mtl.aggregator(name).weights(gram, losses=losses, generator=seeded()),
        rtol=1e-7,
        atol=1e-12,
    )


@pytest.mark.parametrize("name", GRAM_METHODS)
def test_gram_path_equals_full_matrix_path_and_keeps_the_dtype(name: str) -> None:
    grads = task_matrix(4, 16, 3, 9)
    losses = torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=torch.float64)
    update = mtl.aggregator(name)(grads, losses=losses, generator=seeded())
    weights = mtl.aggregator(name).weights(gram_of(grads), losses=losses, generator=seeded())
    torch.testing.assert_close(update, weights @ grads)
    single = mtl.aggregator(name).weights(gram_of(grads).float(), losses=losses.float(), generator=seeded())
    assert single.dtype == torch.float32 and bool(torch.isfinite(single).all())
    spec = mtl.spec("aggregator", name)
    assert spec.scale and spec.paper


@pytest.mark.parametrize("name", GRAM_METHODS)
def test_bad_grams_raise_method_errors(name: str) -> None:
    aggregator = mtl.aggregator(name)
    nan_gram = torch.eye(3, dtype=torch.float64)
    nan_gram[0, 1] = math.nan
    with pytest.raises(mtl.MethodError, match="NaN"):
        aggregator.weights(nan_gram)
    with pytest.raises(mtl.MethodError, match="square"):
        aggregator.weights(torch.ones(3, 2, dtype=torch.float64))


@pytest.mark.parametrize(
    ("name", "hparams", "parameter"),
    [
        ("cagrad", {"c": -0.1}, "c"),
        ("fairgrad", {"alpha": 0.0}, "alpha"),
        ("fairgrad", {"alpha": -1.0}, "alpha"),
        ("mgda", {"normalization": "max"}, "normalization"),
        ("nash_mtl", {"update_weights_every": 0}, "update_weights_every"),
        ("nash_mtl", {"max_norm": -1.0}, "max_norm"),
        ("aligned_mtl", {"scale": "max"}, "scale"),
        ("cagrad", {"rescale": "twice"}, "rescale"),
    ],
)
def test_bad_hyper_parameters_name_the_parameter(name: str, hparams: dict[str, object], parameter: str) -> None:
    with pytest.raises(mtl.MethodError, match=rf"{name}\.{parameter}="):
        mtl.aggregator(name, **hparams)


@pytest.mark.parametrize("simplex", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_primal_dual_active_set_settles_on_the_unique_optimum_of_full_rank_problems(simplex: bool, seed: int) -> None:
    from flatmtl.workers.mtl.aggregators import _qp

    grads = task_matrix(10, 40, 10, seed)
    matrix = gram_of(grads) / float(gram_of(grads).diagonal().max())
    linear = torch.zeros(10, dtype=torch.float64) if simplex else matrix[:, seed]
    fast = _qp._primal_dual_active_set(matrix, linear, simplex, 1e-12)
    assert fast is not None  # settled: no fallback needed
    # the one-coordinate-at-a-time method on the same strictly convex problem (no primal-dual rounds)
    rounds, _qp._ACTIVE_SET_ROUNDS = _qp._ACTIVE_SET_ROUNDS, 0
    try:
        reference = _qp.nonnegative_qp(matrix, linear, simplex=simplex)
    finally:
        _qp._ACTIVE_SET_ROUNDS = rounds
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-10)


@pytest.mark.parametrize("num_tasks", [3, 14, 16])
def test_the_gram_summed_over_column_blocks_is_the_gram(num_tasks: int) -> None:
    from flatmtl.workers.mtl.base import gram_matrix

    grads = torch.randn(num_tasks, 400_000, generator=seeded(num_tasks))  # 4.8 to 26 MB: blocked under 16 rows
    exact = grads.double() @ grads.double().T
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gram = gram_matrix(grads)
    finally:
        torch.set_num_threads(threads)
    assert gram.dtype == torch.float32
    torch.testing.assert_close(gram.double(), exact, rtol=1e-5, atol=1e-5 * float(exact.diagonal().max()))
