"""Image files to tensors with PIL (a dependency of matplotlib)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from flatmtl.workers.problems.errors import DataNotFoundError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def load_image(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """RGB image resized (bilinear) to ``size`` = (height, width), as float [3, H, W] in [0, 1]."""
    from PIL import Image

    if not path.is_file():
        raise DataNotFoundError(path, "image file listed by the data set is not on disk")
    with Image.open(path) as image:
        resized = image.convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR)
        array = np.asarray(resized, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
