"""Checkpoint files and the process-wide random state they carry.

A checkpoint is one ``torch.save`` of plain containers and tensors (loadable with ``weights_only=True``):
numpy's generator state is stored as a tensor, not an array. Files are written to a temporary name and
renamed, so a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flatmtl.workers.training.rundir import naming

FORMAT_VERSION = 1
CPU = torch.device("cpu")


def capture_rng(device: torch.device = CPU) -> dict[str, Any]:
    """Python's, numpy's and torch's global generators, and on a CUDA ``device`` that one GPU's (the rank's
    own: the others are not this rank's to restore, and fewer of them may be visible when it resumes)."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def restore_rng(state: dict[str, Any], device: torch.device = CPU) -> None:
    """The generators ``capture_rng`` saved. A run resumed on another device type keeps its fresh CUDA generator
    (or has none): CPU and CUDA draws differ anyway, so such a resume continues, but not bit-exactly."""
    random.setstate(_as_python_state(state["python"]))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _as_python_state(value: Any) -> tuple[Any, ...]:
    """``random.setstate`` needs tuples; a round trip through a file may hand back lists."""
    version, internal, gauss = value
    return version, tuple(internal), gauss


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save(path: Path, payload: dict[str, Any]) -> None:
    """Atomically: the old checkpoint stays whole until the new one is on disk. Serialised in memory first, so
    that a full disk or a missing permission raises OSError naming the file (torch's own writer reports it as
    an opaque RuntimeError), and the partial file is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"format": FORMAT_VERSION, **payload}, buffer)
    temporary = path.with_name(path.name + ".tmp")
    try:
        with naming(temporary), temporary.open("wb") as handle:
            handle.write(buffer.getbuffer())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise


def load(path: Path) -> dict[str, Any]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {payload.get('format')!r}; allowed: {FORMAT_VERSION}")
    return payload
