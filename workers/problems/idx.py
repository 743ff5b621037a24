"""Reader for the IDX format of MNIST and Fashion-MNIST (optionally gzipped), with numpy only."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from flatmtl.workers.problems.errors import DataNotFoundError, ProblemError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    """The array stored in one IDX file: magic (two zero bytes, dtype code, rank), big-endian dims, data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise ProblemError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
    rank = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=rank, offset=4))
    array = np.frombuffer(data, dtype=_DTYPES[data[2]], offset=4 + 4 * rank)
    if array.size != int(np.prod(shape)):
        raise ProblemError(f"{path}: header says shape {shape} but holds {array.size} values")
    return array.reshape(shape)


def find_idx(directory: Path, stem: str) -> Path:
    """``stem`` or ``stem.gz`` inside ``directory``; a clear error naming both when neither exists."""
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    raise DataNotFoundError(directory / f"{stem}.gz", f"expected the IDX file {stem} (gzipped or not) in {directory}")


def load_mnist_split(directory: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, 28, 28] uint8 and labels [N] int64 of the ``train`` or ``test`` split of an MNIST-format folder."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataNotFoundError(directory, "expected a folder with MNIST-format IDX files")
    images_stem, labels_stem = MNIST_FILES[split]
    images = read_idx(find_idx(directory, images_stem))
    labels = read_idx(find_idx(directory, labels_stem)).astype(np.int64)
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        raise ProblemError(f"{directory}: images {images.shape} and labels {labels.shape} do not match")
    return images, labels
