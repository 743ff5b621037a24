"""Writers of tiny data sets in each loader's exact on-disk format (written independently of the loaders)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_MNIST = REPO_ROOT.parent / "shared" / "data" / "mnist"


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX: two zero bytes, type code 0x08 (uint8), rank, big-endian uint32 dims, then the bytes; gzipped."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def write_mnist_like(folder: Path, rng: np.random.Generator, train: int = 60, test: int = 30) -> None:
    """A folder in MNIST's layout whose pixel values encode nothing but are all distinct per image."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", train), ("t10k", test)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = np.arange(count) % 10
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)


def write_dense(
    root: Path, count: int, height: int, width: int, classes: int, *, normals: bool, label_dir: str
) -> None:
    """The MTAN/LibMTL .npy layout: split/{image,label,depth[,normal]}/i.npy in [H, W, C] order."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for index in range(count):
            streams = {
                "image": rng.random((height, width, 3)).astype(np.float32),
                label_dir: rng.integers(-1, classes, size=(height, width)).astype(np.float32),
                "depth": rng.random((height, width, 1)).astype(np.float32),
            }
            if normals:
                vectors = rng.normal(size=(height, width, 3))
                streams["normal"] = (vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)).astype(np.float32)
            for stream, array in streams.items():
                (root / split / stream).mkdir(parents=True, exist_ok=True)
                np.save(root / split / stream / f"{index}.npy", array)


def write_celeba(root: Path, attributes: list[str], partitions: list[int]) -> np.ndarray:
    """img_align_celeba/ JPEGs plus CelebA's attribute (+-1) and partition text files; returns the 0/1 matrix."""
    rng = np.random.default_rng(0)
    (root / "img_align_celeba").mkdir(parents=True)
    values = rng.integers(0, 2, size=(len(partitions), len(attributes)))
    lines = [str(len(partitions)), " ".join(attributes)]
    partition_lines = []
    for index, part in enumerate(partitions):
        name = f"{index + 1:06d}.jpg"
        Image.fromarray(rng.integers(0, 256, size=(22, 18, 3), dtype=np.uint8)).save(root / "img_align_celeba" / name)
        lines.append(name + "  " + " ".join("1" if v else "-1" for v in values[index]))
        partition_lines.append(f"{name} {part}")
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(partition_lines) + "\n")
    return values


def write_office_home(root: Path, domains: dict[str, dict[str, int]]) -> None:
    """root/<domain>/<class>/<n>.jpg with the given number of images per class."""
    rng = np.random.default_rng(0)
    for domain, classes in domains.items():
        for name, count in classes.items():
            (root / domain / name).mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / domain / name / f"{index:05d}.jpg")
