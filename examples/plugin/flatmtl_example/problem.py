"""``sines``: two regression tasks on the same random inputs, sin and cos of two projections of them."""

from __future__ import annotations

import torch

from flatmtl.workers.problems import Problem, ProblemError, Task, TaskTensorDataset
from flatmtl.workers.problems.tasks import Regression


class Sines(Problem):
    name = "sines"
    model_names = ("mlp", "two_towers")
    default_model = "two_towers"

    def __init__(self, *, seed: int = 0, features: int = 8, train_size: int = 512, test_size: int = 256) -> None:
        super().__init__(seed=seed)
        if features < 1 or train_size < 1 or test_size < 1:
            raise ProblemError("sines: features, train_size and test_size must be >= 1")
        self.sizes = {"train": train_size, "test": test_size}
        self.tasks = [Task("sin", Regression()), Task("cos", Regression())]
        self.input_shape = (features,)

    def _load(self, split: str) -> TaskTensorDataset:
        generator = torch.Generator().manual_seed(self.seed)
        directions = torch.randn(2, self.input_shape[0], generator=generator)
        generator.manual_seed(self.seed * 2 + (split == "test") + 1)
        inputs = torch.randn(self.sizes[split], self.input_shape[0], generator=generator)
        projections = inputs @ directions.T
        return TaskTensorDataset(inputs, [projections[:, 0].sin(), projections[:, 1].cos()])
