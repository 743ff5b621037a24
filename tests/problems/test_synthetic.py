"""``synthetic_regression`` against its definition: linear targets, the similarity it is built with, and
data that is a pure function of the options."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flatmtl.workers import problems
from flatmtl.workers.problems.errors import ProblemError


def _columns(problem: problems.Problem, split: str) -> tuple[np.ndarray, np.ndarray]:
    data = problem.dataset(split)
    inputs = data.inputs.numpy().astype(np.float64)
    return inputs, torch.stack(data.targets, dim=1).numpy().astype(np.float64)


def test_noiseless_targets_are_exactly_linear_in_the_inputs_and_standardised_on_train() -> None:
    problem = problems.build("synthetic_regression", seed=1, features=6, num_tasks=3, train_size=64, noise=0.0)
    inputs, targets = _columns(problem, "train")
    np.testing.assert_allclose(targets.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(targets.std(axis=0), 1.0, atol=1e-5)
    design = np.hstack([inputs, np.ones((len(inputs), 1))])
    test_inputs, test_targets = _columns(problem, "test")
    coefficients = np.linalg.lstsq(design, targets, rcond=None)[0]
    prediction = np.hstack([test_inputs, np.ones((len(test_inputs), 1))]) @ coefficients
    np.testing.assert_allclose(prediction, test_targets, atol=1e-4)


def test_similarity_one_gives_identical_tasks_and_zero_keeps_them_apart() -> None:
    same = problems.build("synthetic_regression", task_similarity=1.0, noise=0.0)
    targets = _columns(same, "test")[1]
    np.testing.assert_allclose(targets, targets[:, :1].repeat(targets.shape[1], axis=1), atol=1e-5)
    apart = problems.build("synthetic_regression", task_similarity=0.0, features=512)
    weights = apart.weights / np.linalg.norm(apart.weights, axis=0)
    cosines = (weights.T @ weights)[np.triu_indices(weights.shape[1], 1)]
    assert np.abs(cosines).max() < 0.25  # independent Gaussian directions in 512 dimensions


def test_data_is_a_pure_function_of_the_options() -> None:
    first, again = (_columns(problems.build("synthetic_regression", seed=5), "train") for _ in range(2))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    other = _columns(problems.build("synthetic_regression", seed=6), "train")
    assert not np.array_equal(first[0], other[0])


@pytest.mark.parametrize(
    ("option", "value"), [("num_tasks", 0), ("train_size", 1), ("task_similarity", 1.5), ("noise", -0.1)]
)
def test_out_of_range_options_name_the_field(option: str, value: float) -> None:
    with pytest.raises(ProblemError, match=option):
        problems.build("synthetic_regression", **{option: value})
