"""Two-image canvases (Multi-MNIST style): one image top-left, one bottom-right, overlapping, labels of both.

Following Sabour et al. (2017) and Lin et al. (2019) as used by the F-MTL and random-weighting papers:
two base images (of different classes when both come from the same data set) are placed at the top-left
and bottom-right corners of a larger canvas; where they overlap the brighter pixel wins (pixel-wise max).
Base images are split into train and test pools before pairing, so no test canvas reuses a training image.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from flatmtl.workers.problems.errors import ProblemError


def split_indices(count: int, test_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random partition of ``range(count)`` into sorted train and test index arrays (test_fraction in (0, 1))."""
    order = rng.permutation(count)
    num_test = max(1, round(count * test_fraction))
    return np.sort(order[num_test:]), np.sort(order[:num_test])


def sample_pairs(
    labels_a: np.ndarray, labels_b: np.ndarray, count: int, rng: np.random.Generator, *, distinct: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` index pairs drawn uniformly, redrawing the second while ``distinct`` and the labels agree."""
    first = rng.integers(0, len(labels_a), size=count)
    second = rng.integers(0, len(labels_b), size=count)
    if distinct:
        if len(np.unique(labels_b)) < 2:
            raise ProblemError("cannot pair images of different classes: the pool holds a single class")
        clash = labels_a[first] == labels_b[second]
        while clash.any():
            second[clash] = rng.integers(0, len(labels_b), size=int(clash.sum()))
            clash = labels_a[first] == labels_b[second]
    return first, second


def compose(top_left: np.ndarray, bottom_right: np.ndarray, size: int) -> np.ndarray:
    """Canvases [N, size, size]: ``top_left`` [N, h, w] at (0, 0), ``bottom_right`` at (size - h, size - w),
    pixel-wise max where they overlap."""
    height, width = top_left.shape[1:]
    if bottom_right.shape[1:] != (height, width) or size < max(height, width):
        raise ProblemError(f"cannot place images {top_left.shape[1:]} and {bottom_right.shape[1:]} on a {size} canvas")
    canvas = np.zeros((len(top_left), size, size), dtype=top_left.dtype)
    canvas[:, :height, :width] = top_left
    corner = canvas[:, size - height :, size - width :]
    np.maximum(corner, bottom_right, out=corner)
    return canvas


class CanvasDataset(Dataset[tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]]):
    """Stored as integers, served as float [1, size, size] scaled by ``1 / max_value`` with the two labels.

    ``sources`` [N, 2] records the ids of the two base images that make up each canvas.
    """

    def __init__(
        self, canvases: np.ndarray, labels: tuple[np.ndarray, np.ndarray], sources: np.ndarray, max_value: float
    ) -> None:
        self.canvases = torch.from_numpy(np.ascontiguousarray(canvases))
        self.labels = tuple(torch.from_numpy(np.asarray(lab, dtype=np.int64)) for lab in labels)
        self.sources = sources
        self.scale = 1.0 / max_value

    def __len__(self) -> int:
        return len(self.canvases)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        image = self.canvases[index].unsqueeze(0).to(torch.float32) * self.scale
        return image, (self.labels[0][index], self.labels[1][index])


Pool = tuple[np.ndarray, np.ndarray, np.ndarray]
"""Base images [N, h, w], their labels [N] and their ids [N] (index in the original data set)."""


def build_canvases(
    pool_a: Pool,
    pool_b: Pool,
    count: int,
    size: int,
    rng: np.random.Generator,
    *,
    distinct: bool,
    max_value: float,
) -> CanvasDataset:
    """``count`` canvases pairing an image of pool A (top-left) with one of pool B (bottom-right)."""
    if count < 1:
        raise ProblemError(f"the number of canvases must be positive, got {count}")
    (images_a, labels_a, ids_a), (images_b, labels_b, ids_b) = pool_a, pool_b
    first, second = sample_pairs(labels_a, labels_b, count, rng, distinct=distinct)
    canvases = compose(images_a[first], images_b[second], size)
    sources = np.stack([ids_a[first], ids_b[second]], axis=1)
    return CanvasDataset(canvases, (labels_a[first], labels_b[second]), sources, max_value)
