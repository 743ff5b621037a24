"""Training runs: ``train(spec, run_dir)`` builds the problem, model, MTL step, optimizer and schedule a
TrainSpec names and trains it locally or as a local process group, into a run directory with metrics,
summary, checkpoints (exact resume) and plots; ``flatness`` measures a trained checkpoint's sharpness.

    >>> from flatmtl.workers.training import RunOptions, train
    >>> result = train({"problem": "multi_digits", "epochs": 2}, "runs/demo", options=RunOptions(max_steps=50))
    >>> result.status                                   # "STOPPED"; train(..., resume=True) continues it

Names are imported on first use, so ``flatmtl``'s control-plane commands (which import ``cli``) never load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RunResult": "local",
    "train": "local",
    "RunOptions": "config",
    "check_runnable": "config",
    "load_spec": "config",
    "parse_spec": "config",
    "ConfigError": "errors",
    "ConfigProblem": "errors",
    "NonFiniteLossError": "errors",
    "TrainingFailedError": "errors",
    "FlatnessSettings": "flatness",
    "evaluate_run": "flatness",
    "rho_sharpness": "flatness",
    "top_hessian_eigenvalue": "flatness",
    "STATUS_FAILED": "rundir",
    "STATUS_STOPPED": "rundir",
    "STATUS_SUCCEEDED": "rundir",
    "RunDirectory": "rundir",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
