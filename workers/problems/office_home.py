"""``office_home``: 65-way object classification in four domains, one task (and one input stream) per domain.

::

    root/Art/Alarm_Clock/00001.jpg ...
    root/Clipart/...  root/Product/...  root/Real_World/...

Classes are the sorted union of class folder names. Each domain's images are split per seed into train
and test (``test_fraction``). Multi-input: every task has its own dataset (``task_datasets``); training
zips them (``dataset``), evaluation scores each task on its own test images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from flatmtl.workers.problems.base import Problem
from flatmtl.workers.problems.errors import DataNotFoundError, ProblemError
from flatmtl.workers.problems.images import IMAGE_SUFFIXES, load_image
from flatmtl.workers.problems.options import check_fraction
from flatmtl.workers.problems.tasks import Classification, Task

DOMAINS = ("Art", "Clipart", "Product", "Real_World")


class ImageListDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    def __init__(self, paths: Sequence[Path], labels: Sequence[int], image_size: int) -> None:
        self.paths, self.image_size = list(paths), image_size
        self.labels = torch.tensor(list(labels), dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return load_image(self.paths[index], (self.image_size, self.image_size)), self.labels[index]


class OfficeHome(Problem):
    name = "office_home"
    model_names = ("resnet18", "cnn", "lenet", "mlp")
    default_model = "resnet18"
    multi_input = True

    def __init__(
        self,
        *,
        data_dir: str | Path,
        seed: int = 0,
        domains: Sequence[str] = DOMAINS,
        image_size: int = 224,
        test_fraction: float = 0.2,
    ) -> None:
        super().__init__(seed=seed)
        check_fraction(self.name, "test_fraction", test_fraction)
        if not domains:
            raise ProblemError("office_home: domains must name at least one domain folder")
        root = Path(data_dir)
        folders = {}
        for domain in domains:
            folders[domain] = root / domain
            if not folders[domain].is_dir():
                raise DataNotFoundError(folders[domain], "expected one folder per domain with one subfolder per class")
        self.classes = sorted({c.name for folder in folders.values() for c in folder.iterdir() if c.is_dir()})
        self.files: dict[str, list[tuple[Path, int]]] = {}
        for domain, folder in folders.items():
            self.files[domain] = [
                (path, label)
                for label, name in enumerate(self.classes)
                if (folder / name).is_dir()
                for path in sorted((folder / name).iterdir())
                if path.suffix.lower() in IMAGE_SUFFIXES
            ]
            if len(self.files[domain]) < 2:
                raise ProblemError(f"office_home: domain folder {folder} holds fewer than 2 images")
        self.image_size, self.test_fraction = image_size, test_fraction
        self.tasks = [Task(domain.lower(), Classification(len(self.classes))) for domain in domains]
        self.input_shape = (3, image_size, image_size)

    def task_datasets(self, split: str) -> list[Dataset[tuple[torch.Tensor, torch.Tensor]]]:
        self._check_split(split)
        datasets: list[Dataset[tuple[torch.Tensor, torch.Tensor]]] = []
        for index, files in enumerate(self.files.values()):
            order = np.random.default_rng([self.seed, index]).permutation(len(files))
            num_test = max(1, round(len(files) * self.test_fraction))
            chosen = sorted(order[:num_test] if split == "test" else order[num_test:])
            datasets.append(
                ImageListDataset([files[i][0] for i in chosen], [files[i][1] for i in chosen], self.image_size)
            )
        return datasets
