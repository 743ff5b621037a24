"""Which runs repeat bit for bit, and the ``deterministic`` switch for what CUDA does not give by default.

On the CPU a run is a pure function of its spec, dtype and thread count: the same checkpoint resumed gives the
same parameters as a run that never stopped, and the engine's own reductions (the step's Gram, per-layer
norms of shards, trunk rows) take fixed orders, with no atomics. On CUDA, by default:

- cuDNN picks convolution algorithms, some of them with atomic adds, and runs convolutions in TF32;
- cuBLAS may split reductions differently from call to call unless its workspace is fixed;
- some backward kernels (``index_add_``, ``index_put_`` with accumulation, pooling, interpolation) scatter with
  atomics, so sums arrive in a different order on every run.

So CUDA runs differ in the last bits between repeats, and a resumed run drifts from an uninterrupted one by
as much. ``deterministic: true`` (a training spec's field, ``flatmtl train --deterministic``) asks torch for
deterministic kernels everywhere one exists, fixes cuBLAS's workspace, turns TF32 off in convolutions and
matrix products, and has the step's ``gradient_mode="auto"`` keep one per-task gradient path without timing the
two (a choice by timing could differ between two runs); runs then repeat bit for bit on the same GPU model,
driver and library versions (slower: cuDNN loses its fastest algorithms). Kernels without a deterministic CUDA
implementation (adaptive average pooling's and bilinear interpolation's backward, ``bincount`` in some metrics)
warn once and stay as they are; a model that uses them is reproducible up to them. Never bit-exact whatever the
setting: CPU against CUDA results (different kernels), runs across GPU models or library versions, NCCL against
gloo sums, and a resume that changes the device type (the step's random stream is reseeded then).
"""

from __future__ import annotations

import os

import torch

CUBLAS_WORKSPACE = ":4096:8"
"""cuBLAS's workspace setting for deterministic reductions (read when its first handle is created)."""


def configure(deterministic: bool) -> None:
    """Set this process's kernels for a run: deterministic as above, or torch's defaults (fast, TF32
    convolutions). Call before the first CUDA computation of the process, where cuBLAS reads its workspace."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = not deterministic
    torch.backends.cuda.matmul.allow_tf32 = False
