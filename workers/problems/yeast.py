"""``yeast``: river's bundled Yeast multi-label set (2,417 genes x 103 features, 14 binary functional classes).

The rows are read from the CSV file river ships (``river/datasets/yeast.csv.gz``, the file behind
``river.datasets.Yeast``).
They are split per seed into train and test (``test_size`` rows, 917 by default as in the original MULAN
split sizes); features are standardised with the training rows' mean and standard deviation.
"""

from __future__ import annotations

import functools
import gzip

import numpy as np
import torch

from flatmtl.workers.problems.base import Problem, TaskTensorDataset
from flatmtl.workers.problems.bundled import bundled_file
from flatmtl.workers.problems.errors import ProblemError
from flatmtl.workers.problems.tasks import Binary, Task

NUM_FEATURES = 103


@functools.cache
def load_yeast() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Features [2417, 103] float64, labels [2417, 14] uint8 and the label names, from river's CSV."""
    path = bundled_file("river", "datasets/yeast.csv.gz", "the datasets extra: pip install 'flatmtl[datasets]'")
    with gzip.open(path, "rt") as handle:
        header = handle.readline().strip().split(",")
        table = np.loadtxt(handle, delimiter=",", dtype=np.float64)
    return table[:, :NUM_FEATURES], table[:, NUM_FEATURES:].astype(np.uint8), tuple(header[NUM_FEATURES:])


class Yeast(Problem):
    name = "yeast"
    model_names = ("mmoe", "mlp")
    default_model = "mmoe"

    def __init__(self, *, seed: int = 0, test_size: int = 917) -> None:
        super().__init__(seed=seed)
        features, _, label_names = load_yeast()
        if not 0 < test_size < len(features):
            raise ProblemError(f"yeast: test_size must be between 1 and {len(features) - 1}, got {test_size}")
        self.test_size = test_size
        self.tasks = [Task(name.lower(), Binary()) for name in label_names]
        self.input_shape = (features.shape[1],)

    def _load(self, split: str) -> TaskTensorDataset:
        features, labels, _ = load_yeast()
        order = np.random.default_rng([self.seed, 0]).permutation(len(features))
        test, train = order[: self.test_size], order[self.test_size :]
        mean, std = features[train].mean(axis=0), features[train].std(axis=0)
        rows = train if split == "train" else test
        inputs = torch.from_numpy((features[rows] - mean) / np.where(std > 0, std, 1.0)).float()
        targets = torch.from_numpy(labels[rows].astype(np.float32))
        return TaskTensorDataset(inputs, list(targets.T.contiguous()))
