"""Training runs: ``train(spec, run_dir)`` builds the problem, model, MTL step, optimizer and schedule a
TrainSpec names and trains it locally or as a local process group, into a run directory with metrics,
summary, checkpoints (exact resume) and plots; ``flatness`` measures a trained checkpoint's sharpness.

    >>> from workers.training import RunOptions, train
    >>> result = train({"problem": "multi_digits", "epochs": 2}, "runs/demo", options=RunOptions(max_steps=50))
    >>> result.status                                   # "STOPPED"; train(..., resume=True) continues it
"""

from workers.training.api import RunResult, train
from workers.training.config import RunOptions, check_runnable, load_spec, parse_spec
from workers.training.errors import ConfigError, ConfigProblem, NonFiniteLossError, TrainingFailedError
from workers.training.flatness import FlatnessSettings, evaluate_run, rho_sharpness, top_hessian_eigenvalue
from workers.training.rundir import STATUS_FAILED, STATUS_STOPPED, STATUS_SUCCEEDED, RunDirectory

__all__ = [
    "STATUS_FAILED",
    "STATUS_STOPPED",
    "STATUS_SUCCEEDED",
    "ConfigError",
    "ConfigProblem",
    "FlatnessSettings",
    "NonFiniteLossError",
    "RunDirectory",
    "RunOptions",
    "RunResult",
    "TrainingFailedError",
    "check_runnable",
    "evaluate_run",
    "load_spec",
    "parse_spec",
    "rho_sharpness",
    "top_hessian_eigenvalue",
    "train",
]
