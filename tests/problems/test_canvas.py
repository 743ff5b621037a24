"""Two-image canvases: placement, overlap, determinism per seed, and disjoint train/test base images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from flatmtl.workers import problems
from flatmtl.workers.problems.canvas import compose
from flatmtl.workers.problems.errors import DataNotFoundError, ProblemError
from flatmtl.workers.problems.idx import load_mnist_split, read_idx
from tests.problems.fixtures import SHARED_MNIST, write_idx, write_mnist_like


def test_compose_places_corners_and_takes_max_where_they_overlap() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(3, 8, 8), dtype=np.uint8)
    b = rng.integers(0, 256, size=(3, 8, 8), dtype=np.uint8)
    canvas = compose(a, b, 12)
    assert canvas.shape == (3, 12, 12)
    np.testing.assert_array_equal(canvas[:, :4, :8], a[:, :4, :])  # above the bottom-right image
    np.testing.assert_array_equal(canvas[:, :8, :4], a[:, :, :4])  # left of it
    np.testing.assert_array_equal(canvas[:, 8:, 4:], b[:, 4:, :])  # below the top-left image
    np.testing.assert_array_equal(canvas[:, 4:, 8:], b[:, :, 4:])
    np.testing.assert_array_equal(canvas[:, 4:8, 4:8], np.maximum(a[:, 4:, 4:], b[:, :4, :4]))
    assert (canvas[:, 8:, :4] == 0).all() and (canvas[:, :4, 8:] == 0).all()


def _rebuild(dataset: problems.CanvasDataset, images_a: np.ndarray, images_b: np.ndarray) -> np.ndarray:
    return compose(images_a[dataset.sources[:, 0]], images_b[dataset.sources[:, 1]], dataset.canvases.shape[-1])


def test_multi_digits_canvases_are_made_of_their_recorded_digits() -> None:
    digits = load_digits()
    problem = problems.build("multi_digits", seed=3, train_size=300, test_size=100)
    for split in ("train", "test"):
        data = problem.dataset(split)
        x, (top_left, bottom_right) = data[0]
        assert x.shape == (1, 12, 12) and x.dtype == torch.float32
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        images = digits.images.astype(np.uint8)
        np.testing.assert_array_equal(data.canvases.numpy(), _rebuild(data, images, images))
        labels = digits.target[data.sources]
        np.testing.assert_array_equal(data.labels[0].numpy(), labels[:, 0])
        np.testing.assert_array_equal(data.labels[1].numpy(), labels[:, 1])
        assert (labels[:, 0] != labels[:, 1]).all()  # two different digits per canvas
        assert int(top_left) == labels[0, 0] and int(bottom_right) == labels[0, 1]
        torch.testing.assert_close(x[0], torch.from_numpy(data.canvases[0].numpy() / 16.0).float())


def test_multi_digits_test_canvases_never_reuse_training_digits() -> None:
    problem = problems.build("multi_digits", seed=1, train_size=2000, test_size=800, test_fraction=0.3)
    pools = problem.base_split()
    assert not set(pools["train"]) & set(pools["test"])
    assert len(pools["train"]) + len(pools["test"]) == len(load_digits().target)
    train, test = problem.dataset("train").sources, problem.dataset("test").sources
    assert set(train.ravel()) <= set(pools["train"]) and set(test.ravel()) <= set(pools["test"])


def test_multi_digits_is_deterministic_per_seed() -> None:
    def canvases(seed: int) -> tuple[np.ndarray, np.ndarray]:
        problem = problems.build("multi_digits", seed=seed, train_size=200, test_size=50)
        return problem.dataset("train").canvases.numpy(), problem.dataset("test").sources

    first, again, other = canvases(7), canvases(7), canvases(8)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


def test_idx_reader_matches_the_published_mnist_checks() -> None:
    if not SHARED_MNIST.is_dir():
        pytest.skip(f"no MNIST at {SHARED_MNIST}")
    images, labels = load_mnist_split(SHARED_MNIST, "train")
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert abs(images.mean() / 255 - 0.1307) < 1e-4
    _, test_labels = load_mnist_split(SHARED_MNIST, "test")
    assert test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_multi_mnist_uses_training_images_for_train_and_test_images_for_test() -> None:
    if not SHARED_MNIST.is_dir():
        pytest.skip(f"no MNIST at {SHARED_MNIST}")
    problem = problems.build("multi_mnist", data_dir=SHARED_MNIST, seed=0, train_size=256, test_size=128)
    assert problem.input_shape == (1, 36, 36)
    for split in ("train", "test"):
        images, labels = load_mnist_split(SHARED_MNIST, split)
        data = problem.dataset(split)
        assert data[5][0].shape == (1, 36, 36)
        np.testing.assert_array_equal(data.canvases.numpy(), _rebuild(data, images, images))
        np.testing.assert_array_equal(data.labels[0].numpy(), labels[data.sources[:, 0]])
        np.testing.assert_array_equal(data.labels[1].numpy(), labels[data.sources[:, 1]])


def test_multi_fashion_mnist_puts_a_digit_top_left_and_a_fashion_item_bottom_right(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    write_mnist_like(tmp_path / "digits", rng)
    write_mnist_like(tmp_path / "fashion", rng)
    problem = problems.build(
        "multi_fashion_mnist",
        data_dir=tmp_path / "digits",
        fashion_dir=tmp_path / "fashion",
        train_size=40,
        test_size=20,
    )
    for split, prefix in (("train", "train"), ("test", "t10k")):
        digits = read_idx(tmp_path / "digits" / f"{prefix}-images-idx3-ubyte.gz")
        fashion = read_idx(tmp_path / "fashion" / f"{prefix}-images-idx3-ubyte.gz")
        data = problem.dataset(split)
        np.testing.assert_array_equal(data.canvases.numpy(), _rebuild(data, digits, fashion))
    fashion_only = problems.build("multi_fashion", data_dir=tmp_path / "fashion", train_size=30, test_size=10)
    data = fashion_only.dataset("train")
    fashion = read_idx(tmp_path / "fashion" / "train-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(data.canvases.numpy(), _rebuild(data, fashion, fashion))


def test_multi_fashion_reads_the_debian_package_by_default() -> None:
    from flatmtl.workers.problems.multi_image import FASHION_MNIST_DIR

    if not FASHION_MNIST_DIR.is_dir():
        pytest.skip("dataset-fashion-mnist is not installed")
    problem = problems.build("multi_fashion", train_size=64, test_size=32)
    assert len(problem.dataset("test")) == 32 and problem.dataset("train")[0][0].shape == (1, 36, 36)


def test_missing_or_unnamed_mnist_folder_fails_with_the_missing_file(tmp_path: Path) -> None:
    write_mnist_like(tmp_path, np.random.default_rng(0))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError, match="t10k-labels-idx1-ubyte"):
        problems.build("multi_mnist", data_dir=tmp_path)
    with pytest.raises(ProblemError, match="data_dir is required"):
        problems.build("multi_mnist")
    with pytest.raises(DataNotFoundError, match="nowhere"):
        problems.build("multi_fashion", data_dir=tmp_path / "nowhere")


def test_idx_reader_rejects_a_file_that_is_not_idx(tmp_path: Path) -> None:
    write_idx(tmp_path / "ok.gz", np.arange(6, dtype=np.uint8).reshape(2, 3))
    np.testing.assert_array_equal(read_idx(tmp_path / "ok.gz"), np.arange(6).reshape(2, 3))
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01abcd")
    with pytest.raises(ProblemError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
