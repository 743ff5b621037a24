"""Gradient-conflict diagnostics against their definitions: hand-computed two-task cases, invariances,
Gram-based values equal to direct computations on G, and shard counts that sum to the whole."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.nn.functional import cosine_similarity

from flatmtl.workers import mtl
from flatmtl.workers.mtl import diagnostics as diag
from tests.mtl.models import tiny_problem


def gram_of(grads: torch.Tensor) -> torch.Tensor:
    return grads @ grads.T


def random_grads(num_tasks: int = 4, size: int = 50, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(num_tasks, size, generator=generator, dtype=torch.float64)


def test_two_task_case_by_hand() -> None:
    grads = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    gram = gram_of(grads)
    summary = diag.summarize(gram)
    assert summary.conflict_ratio == 1.0
    assert summary.cosine_min == pytest.approx(-1 / math.sqrt(2))
    assert summary.cosine_mean == pytest.approx(-1 / math.sqrt(2))
    assert summary.magnitude_similarity_mean == pytest.approx(2 * math.sqrt(2) / 3)
    assert summary.norms == pytest.approx((1.0, math.sqrt(2)))
    conflicts = diag.parameter_conflicts(grads)
    assert (conflicts.conflicting, conflicts.total, conflicts.share) == (1, 2, 0.5)
    assert conflicts.pairwise.tolist() == [[0, 1], [1, 0]]


def test_orthogonal_gradients_do_not_conflict() -> None:
    grads = torch.tensor([[2.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    assert diag.conflict_ratio(gram_of(grads)) == 0.0
    assert diag.cosine_matrix(gram_of(grads))[0, 1] == 0.0
    assert diag.parameter_conflicts(grads).conflicting == 0


def test_cosines_are_invariant_to_positive_scaling_and_flip_under_negation() -> None:
    grads = random_grads()
    cosines = diag.cosine_matrix(gram_of(grads))
    scaled = grads.clone()
    scaled[1] *= 7.5
    torch.testing.assert_close(diag.cosine_matrix(gram_of(scaled)), cosines)
    flipped = grads.clone()
    flipped[2] *= -0.25
    expected = cosines.clone()
    expected[2, :] *= -1
    expected[:, 2] *= -1
    expected[2, 2] = 1.0
    torch.testing.assert_close(diag.cosine_matrix(gram_of(flipped)), expected)


def test_magnitude_similarity_is_one_exactly_for_equal_norms() -> None:
    grads = random_grads(num_tasks=3)
    equal = grads / grads.norm(dim=1, keepdim=True) * 4.0
    torch.testing.assert_close(diag.magnitude_similarity_matrix(gram_of(equal)), torch.ones(3, 3, dtype=torch.float64))
    unequal = equal.clone()
    unequal[0] *= 1.01
    similarity = diag.magnitude_similarity_matrix(gram_of(unequal))
    assert (similarity[0, 1:] < 1).all() and (similarity[1:, 0] < 1).all()
    torch.testing.assert_close(similarity[1, 2], torch.tensor(1.0, dtype=torch.float64))
    # a common rescaling of every gradient changes no ratio of norms
    torch.testing.assert_close(diag.magnitude_similarity_matrix(gram_of(unequal * 1e-3)), similarity)


def test_gram_based_values_equal_direct_computation_on_the_gradients() -> None:
    grads = random_grads(num_tasks=5, size=40, seed=3)
    gram = gram_of(grads)
    norms = grads.norm(dim=1)
    direct_cos = cosine_similarity(grads[:, None, :], grads[None, :, :], dim=-1)
    direct_mag = 2 * norms[:, None] * norms[None, :] / (norms[:, None] ** 2 + norms[None, :] ** 2)
    torch.testing.assert_close(diag.task_norms(gram), norms)
    torch.testing.assert_close(diag.cosine_matrix(gram), direct_cos)
    torch.testing.assert_close(diag.magnitude_similarity_matrix(gram), direct_mag)
    pairs = list(itertools.combinations(range(5), 2))
    conflicting = sum(float(grads[i] @ grads[j]) < 0 for i, j in pairs)
    assert diag.conflict_ratio(gram) == pytest.approx(conflicting / len(pairs))
    summary = diag.summarize(gram)
    assert summary.cosine_min == pytest.approx(min(float(direct_cos[i, j]) for i, j in pairs))
    assert summary.cosine_mean == pytest.approx(sum(float(direct_cos[i, j]) for i, j in pairs) / len(pairs))
    assert summary.magnitude_similarity_mean == pytest.approx(
        sum(float(direct_mag[i, j]) for i, j in pairs) / len(pairs)
    )


def test_zero_gradients_give_finite_values() -> None:
    grads = torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5], [0.0, 0.0, 0.0]], dtype=torch.float64)
    gram = gram_of(grads)
    cosines = diag.cosine_matrix(gram)
    similarity = diag.magnitude_similarity_matrix(gram)
    assert torch.isfinite(cosines).all() and torch.isfinite(similarity).all()
    assert cosines[0, 1] == 0.0 and cosines[0, 2] == 0.0 and cosines[1, 1] == 1.0
    assert similarity[0, 1] == 0.0 and similarity[0, 2] == 1.0
    assert diag.conflict_ratio(gram) == 0.0
    assert all(math.isfinite(value) for value in diag.summarize(gram).as_dict().values())
    assert diag.parameter_conflicts(grads).conflicting == 0


def test_parameter_conflicts_match_a_coordinate_by_coordinate_count_for_many_tasks() -> None:
    grads = random_grads(num_tasks=4, size=30, seed=5)
    grads[:, ::3] = grads[:, ::3].abs()  # coordinates where every task agrees
    grads[1:, 1::5] = 0.0  # zeros take no side
    conflicts = diag.parameter_conflicts(grads)
    signs = torch.sign(grads).T.tolist()
    expected = sum(1 for column in signs if 1.0 in column and -1.0 in column)
    assert conflicts.conflicting == expected
    for i, j in itertools.combinations(range(4), 2):
        opposite = int((grads[i] * grads[j] < 0).sum())
        assert conflicts.pairwise[i, j] == conflicts.pairwise[j, i] == opposite
    assert conflicts.pairwise.diagonal().eq(0).all()
    torch.testing.assert_close(conflicts.pairwise_share(), conflicts.pairwise.double() / 30)


def test_counts_over_shards_sum_to_the_whole() -> None:
    grads = random_grads(num_tasks=3, size=41, seed=7)
    whole = diag.parameter_conflicts(grads)
    halves = diag.parameter_conflicts(grads[:, :17]) + diag.parameter_conflicts(grads[:, 17:])
    assert (halves.conflicting, halves.total) == (whole.conflicting, whole.total)
    assert torch.equal(halves.pairwise, whole.pairwise)
    # the reducer path: two ranks holding identical shards sum to the counts of both shards side by side
    doubled = diag.parameter_conflicts(grads, reduce_counts=lambda counts: counts * 2)
    side_by_side = diag.parameter_conflicts(torch.cat([grads, grads], dim=1))
    assert (doubled.conflicting, doubled.total) == (side_by_side.conflicting, side_by_side.total)
    assert torch.equal(doubled.pairwise, side_by_side.pairwise)
    # Gram matrices of shards sum to the whole Gram, so the summary needs only that sum
    sharded = gram_of(grads[:, :17]) + gram_of(grads[:, 17:])
    assert diag.summarize(sharded).as_dict() == pytest.approx(diag.summarize(gram_of(grads)).as_dict())


def test_single_task_has_no_pairs() -> None:
    summary = diag.summarize(torch.tensor([[4.0]]))
    assert summary.as_dict() == {
        "conflict_ratio": 0.0,
        "cosine_min": 1.0,
        "cosine_mean": 1.0,
        "magnitude_similarity_mean": 1.0,
        "grad_norm_0": 2.0,
    }


def test_bad_input_raises_method_error_naming_the_problem() -> None:
    with pytest.raises(mtl.MethodError, match="square"):
        diag.summarize(torch.ones(2, 3))
    with pytest.raises(mtl.MethodError, match="NaN"):
        diag.parameter_conflicts(torch.tensor([[1.0, float("nan")]]))


def test_summary_of_the_step_record_matches_the_per_task_gradients() -> None:
    model, x, targets = tiny_problem()
    step = mtl.MTLStep.from_model(model)
    record = step(lambda: model.task_losses(x, targets))
    assert record.gram is not None

    reference, _, _ = tiny_problem()
    losses = reference.task_losses(x, targets)
    rows = []
    for task in range(3):
        grads = torch.autograd.grad(losses[task], reference.shared_parameters(), retain_graph=True)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    expected = diag.summarize(gram_of(torch.stack(rows)))
    assert diag.summarize(record.gram).as_dict() == pytest.approx(expected.as_dict())
