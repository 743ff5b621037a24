"""``celeba``: 40 binary face attributes from aligned CelebA images.

::

    root/img_align_celeba/000001.jpg ...
    root/list_attr_celeba.txt        line 1: count; line 2: the 40 attribute names; then "000001.jpg -1 1 ..."
    root/list_eval_partition.txt     "000001.jpg 0" with 0 = train, 1 = val, 2 = test

Images are resized to ``image_size`` (64x64 as in the F-MTL paper); attribute -1/1 becomes 0/1. The
partition file fixes the splits, so ``seed`` changes nothing here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from flatmtl.workers.problems.base import Problem, Sample
from flatmtl.workers.problems.errors import DataNotFoundError, ProblemError
from flatmtl.workers.problems.images import load_image
from flatmtl.workers.problems.tasks import Binary, Task

PARTITIONS = {"train": 0, "val": 1, "test": 2}


def _require(path: Path, expected: str) -> Path:
    if not path.exists():
        raise DataNotFoundError(path, expected)
    return path


def read_attributes(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """Attribute names, file names and the 0/1 attribute matrix [N, A] of ``list_attr_celeba.txt``."""
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        raise ProblemError(f"{path}: expected a count line and a header line of attribute names")
    names = lines[1].split()
    files, rows = [], []
    for number, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != len(names) + 1:
            raise ProblemError(
                f"{path}:{number}: expected a file name and {len(names)} values, got {len(fields)} fields"
            )
        files.append(fields[0])
        rows.append([int(v) > 0 for v in fields[1:]])
    return names, files, np.array(rows, dtype=np.uint8).reshape(len(rows), len(names))


def read_partition(path: Path) -> dict[str, int]:
    """File name -> partition (0 train, 1 val, 2 test) of ``list_eval_partition.txt``."""
    partition = {}
    for line in path.read_text().splitlines():
        fields = line.split()
        if fields:
            partition[fields[0]] = int(fields[1])
    return partition


class CelebADataset(Dataset[Sample]):
    def __init__(self, image_dir: Path, files: list[str], attributes: np.ndarray, image_size: int) -> None:
        self.image_dir, self.files, self.image_size = image_dir, files, image_size
        self.attributes = torch.from_numpy(attributes.astype(np.float32))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Sample:
        image = load_image(self.image_dir / self.files[index], (self.image_size, self.image_size))
        return image, tuple(self.attributes[index].unbind())


class CelebA(Problem):
    name = "celeba"
    model_names = ("resnet18", "cnn", "lenet", "mlp")
    default_model = "resnet18"
    splits = ("train", "val", "test")

    def __init__(self, *, data_dir: str | Path, seed: int = 0, image_size: int = 64) -> None:
        super().__init__(seed=seed)
        if image_size < 8:
            raise ProblemError(f"celeba: image_size must be at least 8 pixels, got {image_size}")
        root = Path(data_dir)
        self.image_dir = _require(root / "img_align_celeba", "expected the folder of aligned CelebA images")
        attr_path = _require(root / "list_attr_celeba.txt", "expected CelebA's attribute list")
        partition_path = _require(root / "list_eval_partition.txt", "expected CelebA's train/val/test partition")
        names, self.files, self.attributes = read_attributes(attr_path)
        partition = read_partition(partition_path)
        missing = [f for f in self.files if f not in partition]
        if missing:
            raise ProblemError(f"{partition_path}: no partition for {len(missing)} image(s), e.g. {missing[0]}")
        self.partition = np.array([partition[f] for f in self.files])
        self.image_size = image_size
        self.tasks = [Task(name, Binary()) for name in names]
        self.input_shape = (3, image_size, image_size)

    def _load(self, split: str) -> CelebADataset:
        rows = np.flatnonzero(self.partition == PARTITIONS[split])
        return CelebADataset(self.image_dir, [self.files[i] for i in rows], self.attributes[rows], self.image_size)
