"""``synthetic_regression``: K related linear regressions generated from the seed, so it needs no data files
and no optional package (the problem a base install trains on).

Inputs are standard Gaussian vectors of ``features`` dimensions. Task k's target is ``x . w_k + noise * e``
with ``w_k = sqrt(s) w_0 + sqrt(1 - s) u_k``: one direction ``w_0`` shared by every task and one of its own,
all drawn N(0, I / features), so ``s = task_similarity`` is the expected cosine between two tasks' weights
(1: one task K times; 0: unrelated tasks). Targets are standardised with the training rows' mean and
standard deviation; MAE is reported in the original units.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from flatmtl.workers.problems.base import Problem, TaskTensorDataset
from flatmtl.workers.problems.errors import ProblemError
from flatmtl.workers.problems.tasks import Regression, Task


class SyntheticRegression(Problem):
    name = "synthetic_regression"
    model_names = ("mlp", "mmoe")
    default_model = "mlp"

    def __init__(
        self,
        *,
        seed: int = 0,
        num_tasks: int = 4,
        features: int = 16,
        train_size: int = 1024,
        test_size: int = 256,
        task_similarity: float = 0.5,
        noise: float = 0.1,
    ) -> None:
        super().__init__(seed=seed)
        for field, value in (("num_tasks", num_tasks), ("features", features)):
            if value < 1:
                raise ProblemError(f"{self.name}: {field} must be a positive integer, got {value}")
        for field, value in (("train_size", train_size), ("test_size", test_size)):
            if value < 2:
                raise ProblemError(f"{self.name}: {field} must be at least 2 rows, got {value}")
        if not 0 <= task_similarity <= 1:
            raise ProblemError(f"{self.name}: task_similarity must be in [0, 1], got {task_similarity}")
        if not noise >= 0:
            raise ProblemError(f"{self.name}: noise must be non-negative, got {noise}")
        self.sizes = {"train": train_size, "test": test_size}
        self.task_similarity = task_similarity
        self.noise = noise
        rng = np.random.default_rng([seed, 0])
        shared = rng.normal(0.0, 1.0 / math.sqrt(features), size=(features, 1))
        own = rng.normal(0.0, 1.0 / math.sqrt(features), size=(features, num_tasks))
        self.weights = math.sqrt(task_similarity) * shared + math.sqrt(1 - task_similarity) * own  # [D, K]
        train_targets = self._raw("train")[1]
        std = train_targets.std(axis=0)
        self.target_mean, self.target_std = train_targets.mean(axis=0), np.where(std > 0, std, 1.0)
        self.tasks = [Task(f"task_{k}", Regression(scale=float(self.target_std[k]))) for k in range(num_tasks)]
        self.input_shape = (features,)

    def _raw(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Inputs [N, D] and unstandardised targets [N, K] of a split (a pure function of the options)."""
        rng = np.random.default_rng([self.seed, self.splits.index(split) + 1])
        inputs = rng.standard_normal((self.sizes[split], self.weights.shape[0]))
        targets = inputs @ self.weights + self.noise * rng.standard_normal((self.sizes[split], self.weights.shape[1]))
        return inputs, targets

    def _load(self, split: str) -> TaskTensorDataset:
        inputs, targets = self._raw(split)
        standardised = torch.from_numpy((targets - self.target_mean) / self.target_std).float()
        return TaskTensorDataset(torch.from_numpy(inputs).float(), list(standardised.T.contiguous()))
