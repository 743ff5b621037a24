"""``nyuv2`` and ``cityscapes`` in the preprocessed .npy layout of MTAN and LibMTL.

::

    root/train/image/0.npy   [H, W, 3] float, RGB in [0, 1]
    root/train/label/0.npy   [H, W] class index, -1 = unlabelled (Cityscapes: ``label/`` or MTAN's ``label_7/``)
    root/train/depth/0.npy   [H, W, 1] (or [H, W]), 0 = not measured
    root/train/normal/0.npy  [H, W, 3] unit normals (NYUv2 only)
    root/val/...             the same; the standard evaluation split, served here as ``test``

Files are numbered 0..N-1 in every folder. NYUv2: 13-class segmentation, depth and normals (288x384);
Cityscapes: 7-class segmentation and depth (128x256).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from flatmtl.workers.problems.base import Problem, Sample
from flatmtl.workers.problems.errors import DataNotFoundError
from flatmtl.workers.problems.tasks import Depth, Normal, Segmentation, Task

SPLIT_FOLDERS = {"train": "train", "test": "val"}


def _as_channels_first(array: np.ndarray) -> torch.Tensor:
    """[H, W, C] -> [C, H, W] float32; a 2-D map becomes [1, H, W]."""
    array = array[..., None] if array.ndim == 2 else array
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, -1, 0), dtype=np.float32))


class NpyDenseDataset(Dataset[Sample]):
    """Numbered .npy files in one folder per stream; checks every file exists when built."""

    def __init__(self, root: Path, folders: dict[str, str]) -> None:
        self.root = root
        self.folders = folders
        image_dir = root / folders["image"]
        if not image_dir.is_dir():
            raise DataNotFoundError(image_dir, "expected a folder of numbered .npy images (0.npy, 1.npy, ...)")
        self.count = len(list(image_dir.glob("*.npy")))
        if self.count == 0:
            raise DataNotFoundError(image_dir / "0.npy", "expected numbered .npy images")
        for folder in folders.values():
            for index in range(self.count):
                path = root / folder / f"{index}.npy"
                if not path.is_file():
                    raise DataNotFoundError(path, f"every stream needs files 0..{self.count - 1}.npy like image/")

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Sample:
        def load(stream: str) -> np.ndarray:
            return np.load(self.root / self.folders[stream] / f"{index}.npy")

        image = _as_channels_first(load("image"))
        targets = [torch.from_numpy(load("label").astype(np.int64))]
        targets.append(_as_channels_first(load("depth")))
        if "normal" in self.folders:
            targets.append(_as_channels_first(load("normal")))
        return image, tuple(targets)


class DenseProblem(Problem):
    """Shared by NYUv2 and Cityscapes: folders checked at construction, input size read from the first image."""

    model_names = ("mtan", "segnet")
    default_model = "mtan"
    streams: dict[str, str]

    def __init__(self, *, data_dir: str | Path, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.data_dir = Path(data_dir)
        self.streams = self._streams()
        for split in self.splits:  # a wrong path or a missing file fails here, not mid-run
            self._datasets[split] = self._load(split)
        image = np.load(self.data_dir / "train" / "image" / "0.npy", mmap_mode="r")
        self.input_shape = (image.shape[-1], image.shape[0], image.shape[1])

    def _streams(self) -> dict[str, str]:
        raise NotImplementedError

    def _load(self, split: str) -> NpyDenseDataset:
        return NpyDenseDataset(self.data_dir / SPLIT_FOLDERS[split], self.streams)


class NYUv2(DenseProblem):
    name = "nyuv2"

    def __init__(self, *, data_dir: str | Path, seed: int = 0) -> None:
        self.tasks = [Task("segmentation", Segmentation(13)), Task("depth", Depth()), Task("normal", Normal())]
        super().__init__(data_dir=data_dir, seed=seed)

    def _streams(self) -> dict[str, str]:
        return {"image": "image", "label": "label", "depth": "depth", "normal": "normal"}


class Cityscapes(DenseProblem):
    name = "cityscapes"

    def __init__(self, *, data_dir: str | Path, seed: int = 0) -> None:
        self.tasks = [Task("segmentation", Segmentation(7)), Task("depth", Depth())]
        super().__init__(data_dir=data_dir, seed=seed)

    def _streams(self) -> dict[str, str]:
        train = self.data_dir / "train"
        label = "label_7" if not (train / "label").is_dir() and (train / "label_7").is_dir() else "label"
        return {"image": "image", "label": label, "depth": "depth"}
