"""Multi-MNIST-style problems: two images on one canvas, classify the top-left and the bottom-right one.

- ``multi_digits``: scikit-learn's bundled 8x8 digits on a 12x12 canvas; the 1,797 base images are split
  into train and test pools (``test_fraction``) before pairing. Needs the ``datasets`` extra; for tests and demos.
- ``multi_mnist``: MNIST on a 36x36 canvas, from the IDX files in ``data_dir`` (required).
- ``multi_fashion``: Fashion-MNIST on a 36x36 canvas, from ``data_dir`` (default: Debian's
  ``dataset-fashion-mnist`` package folder).
- ``multi_fashion_mnist``: an MNIST digit top-left (``data_dir``) and a Fashion-MNIST item bottom-right
  (``fashion_dir``).

28x28 problems draw train canvases from the official training images and test canvases from the official
test images (120K and 20K canvases by default, as in the random-weighting paper). Canvases are a pure
function of ``seed``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from flatmtl.workers.problems.base import Problem
from flatmtl.workers.problems.bundled import bundled_file
from flatmtl.workers.problems.canvas import CanvasDataset, Pool, build_canvases, split_indices
from flatmtl.workers.problems.errors import ProblemError
from flatmtl.workers.problems.idx import MNIST_FILES, find_idx, load_mnist_split
from flatmtl.workers.problems.options import check_fraction
from flatmtl.workers.problems.tasks import Classification, Task

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


class CanvasProblem(Problem):
    """Shared by the four: two 10-way tasks on a square canvas; subclasses give the image pools of a split."""

    model_names = ("lenet", "cnn", "mlp", "resnet18")
    default_model = "lenet"
    canvas_size: int
    distinct_classes: bool = True
    max_value: float = 255.0

    def __init__(self, *, seed: int, train_size: int, test_size: int) -> None:
        super().__init__(seed=seed)
        for field, value in (("train_size", train_size), ("test_size", test_size)):
            if value < 1:
                raise ProblemError(f"{self.name}: {field} must be a positive number of canvases, got {value}")
        self.sizes = {"train": train_size, "test": test_size}
        self.tasks = [Task("top_left", Classification(10)), Task("bottom_right", Classification(10))]
        self.input_shape = (1, self.canvas_size, self.canvas_size)

    def pools(self, split: str) -> tuple[Pool, Pool]:
        raise NotImplementedError

    def _load(self, split: str) -> CanvasDataset:
        rng = np.random.default_rng([self.seed, self.splits.index(split) + 1])
        first, second = self.pools(split)
        return build_canvases(
            first,
            second,
            self.sizes[split],
            self.canvas_size,
            rng,
            distinct=self.distinct_classes,
            max_value=self.max_value,
        )


class MultiDigits(CanvasProblem):
    name = "multi_digits"
    default_model = "mlp"
    canvas_size = 12
    max_value = 16.0

    def __init__(
        self, *, seed: int = 0, train_size: int = 6000, test_size: int = 2000, test_fraction: float = 0.25
    ) -> None:
        super().__init__(seed=seed, train_size=train_size, test_size=test_size)
        check_fraction(self.name, "test_fraction", test_fraction)
        self.test_fraction = test_fraction
        _digits_file()

    def base_split(self) -> dict[str, np.ndarray]:
        """Ids of the base digits in each pool (a pure function of ``seed`` and ``test_fraction``)."""
        count = len(_digits()[1])
        train, test = split_indices(count, self.test_fraction, np.random.default_rng([self.seed, 0]))
        return {"train": train, "test": test}

    def pools(self, split: str) -> tuple[Pool, Pool]:
        images, labels = _digits()
        ids = self.base_split()[split]
        pool = (images[ids], labels[ids], ids)
        return pool, pool


def _digits_file() -> Path:
    """Where scikit-learn keeps the digits; checked when the problem is built, so a missing extra fails at once."""
    return bundled_file("sklearn", "datasets/data/digits.csv.gz", "the datasets extra: pip install 'flatmtl[datasets]'")


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (values 0-16) as uint8 images [1797, 8, 8] and int64 labels, read from
    the CSV behind ``sklearn.datasets.load_digits`` (64 pixels then the label per row)."""
    table = np.loadtxt(_digits_file(), delimiter=",", dtype=np.int64)
    return table[:, :64].reshape(-1, 8, 8).astype(np.uint8), table[:, 64]


def _check_mnist_dir(name: str, field: str, directory: str | Path | None) -> Path:
    """The folder as a Path, after checking that all four IDX files are there."""
    if directory is None:
        raise ProblemError(f"{name}: {field} is required: a folder holding the MNIST IDX files {sorted(MNIST_FILES)}")
    path = Path(directory)
    for stem in (s for pair in MNIST_FILES.values() for s in pair):
        find_idx(path, stem)
    return path


def _idx_pool(directory: Path, split: str) -> Pool:
    images, labels = load_mnist_split(directory, split)
    return images, labels, np.arange(len(labels))


class MultiMNIST(CanvasProblem):
    name = "multi_mnist"
    canvas_size = 36

    def __init__(
        self, *, data_dir: str | Path | None = None, seed: int = 0, train_size: int = 120_000, test_size: int = 20_000
    ) -> None:
        super().__init__(seed=seed, train_size=train_size, test_size=test_size)
        self.data_dir = _check_mnist_dir(self.name, "data_dir", data_dir)

    def pools(self, split: str) -> tuple[Pool, Pool]:
        pool = _idx_pool(self.data_dir, split)
        return pool, pool


class MultiFashion(MultiMNIST):
    """Multi-MNIST's construction on Fashion-MNIST, read from Debian's dataset-fashion-mnist by default."""

    name = "multi_fashion"

    def __init__(
        self,
        *,
        data_dir: str | Path = FASHION_MNIST_DIR,
        seed: int = 0,
        train_size: int = 120_000,
        test_size: int = 20_000,
    ) -> None:
        super().__init__(data_dir=data_dir, seed=seed, train_size=train_size, test_size=test_size)


class MultiFashionMNIST(CanvasProblem):
    name = "multi_fashion_mnist"
    canvas_size = 36
    distinct_classes = False

    def __init__(
        self,
        *,
        data_dir: str | Path | None = None,
        fashion_dir: str | Path = FASHION_MNIST_DIR,
        seed: int = 0,
        train_size: int = 120_000,
        test_size: int = 20_000,
    ) -> None:
        super().__init__(seed=seed, train_size=train_size, test_size=test_size)
        self.data_dir = _check_mnist_dir(self.name, "data_dir", data_dir)
        self.fashion_dir = _check_mnist_dir(self.name, "fashion_dir", fashion_dir)

    def pools(self, split: str) -> tuple[Pool, Pool]:
        return _idx_pool(self.data_dir, split), _idx_pool(self.fashion_dir, split)
