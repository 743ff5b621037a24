"""A run directory made ready for a run that starts or continues: one rule for local runs and a worker's trials,
applied once per run before any rank starts."""

from __future__ import annotations

from flatmtl.service.specs.train import TrainSpec
from flatmtl.workers.training import checkpoint
from flatmtl.workers.training.config import RunOptions
from flatmtl.workers.training.errors import ConfigError, ConfigProblem
from flatmtl.workers.training.rundir import RunDirectory


def prepare_run(run: RunDirectory, spec: TrainSpec, options: RunOptions, *, resume: bool) -> bool:
    """Create the run directory, or trim it to its checkpoint; True when there is a checkpoint to resume from.

    A checkpoint is continued only when ``resume`` asks for it; otherwise it is refused rather than overwritten.
    The metric files start empty, or keep only the lines up to the checkpoint's step (lines a stopped or killed
    attempt wrote after it are trained again). A summary left by an earlier attempt (STOPPED, FAILED) no longer
    describes the run, so it is removed; the run writes its own when it ends. The spec and options written are
    this run's.
    """
    has_checkpoint = run.latest.exists()
    if has_checkpoint and not resume:
        raise ConfigError(
            [ConfigProblem("run_dir", str(run.root), "already holds a run; resume it or choose another directory")]
        )
    run.create()
    if has_checkpoint:
        run.keep_until(step=checkpoint.load(run.latest)["position"]["step"])
    else:
        run.write_lines(run.step_metrics, [])
        run.write_lines(run.epoch_metrics, [])
    run.summary.unlink(missing_ok=True)
    run.write_json(run.config, spec.model_dump(mode="json"))
    run.write_json(run.options, options.as_dict())
    return has_checkpoint
