"""Runs a job's trials on Ray: Ray Tune over function trials, each of which runs a Ray Train ``TorchTrainer``.

Ray 2.60's Train V2 refuses ``Tuner(TorchTrainer)``, so every trial is a Tune function that builds a
TorchTrainer of ``spec.processes`` DDP workers (:func:`flatmtl.workers.worker.ranks.rank_main`) and forwards their
epoch reports to Tune (``TuneReportCallback``). A training job is a sweep of one trial: one path for
metrics (Tune's result callback, in this process), for cancellation (a Tune stopper that ends every trial,
whose Train controller and ranks share its fate) and for timeouts.

Nothing waits forever: a trial that cannot fit the cluster is refused before Tune starts (Tune would
otherwise keep it pending), a worker group that does not start in ``worker_start_timeout_s`` fails the trial,
collectives time out after ``collective_timeout_s``, and the whole job after ``job_timeout_s``.

Ray, and ``callbacks`` (whose classes subclass Ray's), are imported inside the functions that use them, so
the worker's loop imports this module without loading Ray until a job runs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import threading
import uuid
from functools import partial
from pathlib import Path
from queue import Empty  # Ray's queue raises a subclass of it
from typing import Any

from flatmtl.service.specs.train import TrainSpec
from flatmtl.workers.training import RunOptions
from flatmtl.workers.worker import lineage, search, storage
from flatmtl.workers.worker.contracts import (
    CHECKPOINT_KEY,
    FAILURE_KEY,
    PLACEMENT_GROUP_NAMESPACE,
    RankConfig,
    TrialPayload,
    TrialPlan,
    TrialSink,
)
from flatmtl.workers.worker.plan import JobPlan, trial_spec
from flatmtl.workers.worker.ranks import rank_main

TRIAL_ACTOR_CPUS = 0.01
"""What the Tune trial (the Train driver) reserves; its ranks reserve the real CPUs. Zero is refused by Tune."""


KEPT_CHECKPOINTS = 2
"""Train checkpoints kept per run outside PBT (whose clones may need any epoch's): the newest is what resumes."""


class ClusterTooSmallError(RuntimeError):
    """A trial needs more of a resource than the whole Ray cluster has."""


class TrialFailedError(RuntimeError):
    """A trial's training failed (its FAILED summary is in its last checkpoint)."""


@dataclasses.dataclass(frozen=True)
class RaySettings:
    """How this worker reaches Ray and bounds its runs."""

    address: str = "local"
    num_cpus: int | None = None
    object_store_bytes: int = 256 * 2**20
    storage: str | None = None
    """Where jobs' runs persist (``flatmtl.workers.worker.storage``); None: each job's artifact directory."""
    auth_token_file: Path | None = None
    """A token-authenticated cluster's token; None: Ray's own variables decide."""
    train_max_failures: int = 2
    worker_start_timeout_s: float = 120.0
    collective_timeout_s: float = 300.0
    health_check_timeout_s: float = 120.0
    job_timeout_s: float | None = None

    def local_cpus(self) -> int:
        """A local Ray's CPU count: at least 4, because Ray does not start a 2-worker trial next to its driver
        on 2 declared CPUs, while the work itself is CPU-bound and gains nothing from exactness here."""
        return self.num_cpus or max(os.cpu_count() or 1, 4)

    def auth_env(self) -> dict[str, str]:
        """What this process needs to join a cluster with token authentication."""
        if self.auth_token_file is None:
            return {}
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.auth_token_file)}

    def env_vars(self) -> dict[str, str]:
        return {
            "RAY_TRAIN_V2_ENABLED": "1",
            "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": str(self.worker_start_timeout_s),
            "RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S": str(self.health_check_timeout_s),
            "RAY_TRAIN_COLLECTIVE_TIMEOUT_S": str(self.collective_timeout_s),
            "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "1.0",
            "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
            "RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION": "0",
            "RAY_AIR_NEW_OUTPUT": "0",
            "RAY_DEDUP_LOGS": "0",
        }


def ensure_ray(settings: RaySettings) -> None:
    """Connect to (or start) Ray once per process, with the timeouts in every Ray process's environment."""
    import ray

    if ray.is_initialized():
        return
    env = settings.env_vars()
    os.environ.update(env)  # this process runs Tune's driver and reads some of them itself
    os.environ.update(settings.auth_env())
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": False, "include_dashboard": False}
    if settings.address == "local":
        kwargs.update(num_cpus=settings.local_cpus(), object_store_memory=settings.object_store_bytes)
    else:
        kwargs["address"] = settings.address
    ray.init(**kwargs)


def placement_group_key(job_id: int, index: int) -> str:
    return f"job-{job_id}/trial-{index:03d}"


def release_placement_group(key: str) -> None:
    """Remove the trial's Train placement group if it is still there.

    Ray Train removes it when a run ends normally. When Tune ends a trial early (a scheduler's stop, a
    cancellation) it kills the trial's actor, and the Train controller dies with it; the cleaner Ray Train
    leaves behind needs the dashboard's State API, which a minimal Ray lacks, so the group would keep its
    CPUs reserved until this process exits and later trials would never start. Rank 0 records the group's
    id in Ray's internal key-value store, which every node and this driver reach.
    """
    from ray.experimental import internal_kv
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

    recorded = internal_kv._internal_kv_get(key, namespace=PLACEMENT_GROUP_NAMESPACE)
    if recorded is None:
        return
    group = PlacementGroup(ray_pg_id(recorded.decode()))
    if placement_group_table(group).get("state") not in (None, "REMOVED"):
        remove_placement_group(group)
    internal_kv._internal_kv_del(key, namespace=PLACEMENT_GROUP_NAMESPACE)


def ray_pg_id(hex_id: str) -> Any:
    from ray._raylet import PlacementGroupID

    return PlacementGroupID.from_hex(hex_id)


def trial_spec_for(trial: TrialPlan, config: dict[str, Any], payload: TrialPayload) -> TrainSpec:
    """The spec a trial trains: the plan's, with the fields Tune chooses (Optuna's, PBT's) from its config."""
    paths = payload.config_paths
    if not paths:
        return trial.spec
    assert payload.base is not None  # only a sweep has config paths
    return trial_spec(payload.base, {**trial.config, **{path: config[path] for path in paths}})


def _fit_forwarding(trainer: Any, reports: Any, report: Any) -> None:
    """``trainer.fit()`` in a thread while this thread hands each epoch report to ``report``: Tune's report (with a
    checkpoint under PBT) must come from the trial function's own thread."""
    failure: list[BaseException] = []
    done = threading.Event()

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as error:  # re-raised in the trial's thread below
            failure.append(error)
        finally:
            done.set()

    thread = threading.Thread(target=fit, name="train-fit", daemon=True)
    thread.start()
    while True:
        try:
            item = reports.get(timeout=0.5)
        except Empty:
            if done.is_set() and reports.empty():
                break
            continue
        report(item)
    thread.join()
    if failure:
        raise failure[0]


def run_trial(config: dict[str, Any], payload: TrialPayload) -> None:
    """A Tune function trial: one TorchTrainer run of the plan's trial that Tune's trial name names (in a Ray actor).

    The Train run is ``trial-NNN`` in the job's storage, so a later attempt of the job restores it from its last
    checkpoint on whatever node it runs. Under PBT a trial restarted with another trial's checkpoint starts a
    new run from it (``flatmtl.workers.worker.lineage``), and each epoch report hands Tune a reference to that
    epoch's checkpoint. After each persisted report the trial records its run and newest checkpoint in storage
    (``storage.record_latest``): what the worker collects, and which run a later attempt continues.
    """
    from ray import tune
    from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

    from flatmtl.workers.worker.callbacks import ForwardReports

    context = tune.get_context()
    index = search.trial_index(context.get_trial_name())
    trial = payload.trials[index]
    key = placement_group_key(payload.job_id, index)
    release_placement_group(key)  # left by this trial's previous run when PBT paused it
    spec = trial_spec_for(trial, config, payload)
    filesystem, root = payload.storage.resolve()
    cloned = tune.get_checkpoint()
    adopt = None
    if cloned is not None:  # PBT: continue from a better trial's checkpoint, even if this run had finished
        with cloned.as_directory() as directory:
            source = lineage.origin(Path(directory))
        adopt = Checkpoint(path=source["path"], filesystem=filesystem)
        run_name = (
            f"trial-{index:03d}-from-{source['trial_index']:03d}-epoch-{source['epoch']:04d}-{uuid.uuid4().hex[:8]}"
        )
        latest = storage.LatestRun(run_name, None)
        storage.record_latest(payload.storage, index, latest)
    else:
        latest = storage.read_latest(payload.storage, index) or storage.LatestRun(f"trial-{index:03d}", None)
    failures: list[dict[str, Any]] = []

    def report(item: dict[str, Any]) -> None:
        nonlocal latest
        metrics = dict(item)
        path = metrics.get(CHECKPOINT_KEY)
        if path is not None and path != latest.checkpoint:
            latest = storage.LatestRun(latest.run, path)
            storage.record_latest(payload.storage, index, latest)
        failure = metrics.pop(FAILURE_KEY, None)
        if failure is not None:
            failures.append(failure)
        if "epoch" not in metrics:
            return
        if payload.pbt and path is not None:
            with tempfile.TemporaryDirectory(prefix="flatmtl-pbt-") as scratch:
                reference = Path(scratch) / "checkpoint"
                lineage.export(reference, index=index, epoch=int(metrics["epoch"]), path=path)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(reference))
        else:
            tune.report(metrics)

    gpus = payload.gpus
    reports = Queue(maxsize=1, actor_options={"num_cpus": 0})
    rank_config = RankConfig(
        spec,
        payload.options,
        key,
        adopt=adopt,
        mutable=payload.config_paths,
        discard_other_spec=payload.search == "optuna",
        replay=cloned is None,
    )
    trainer = TorchTrainer(
        partial(rank_main, rank_config),
        torch_config=TorchConfig(backend="nccl" if gpus > 0 else "gloo", timeout_s=int(payload.collective_timeout_s)),
        scaling_config=ScalingConfig(
            num_workers=spec.processes,
            use_gpu=gpus > 0,
            resources_per_worker={"CPU": payload.cpus, **({"GPU": gpus} if gpus > 0 else {})},
        ),
        run_config=RunConfig(
            name=latest.run,
            storage_path=f"{root}/train",
            storage_filesystem=filesystem,
            callbacks=[ForwardReports(reports)],
            checkpoint_config=CheckpointConfig(num_to_keep=None if payload.pbt else KEPT_CHECKPOINTS),
            failure_config=FailureConfig(max_failures=payload.train_max_failures, controller_failure_limit=0),
            worker_runtime_env={"working_dir": payload.working_dir} if payload.working_dir else {},
        ),
    )
    try:
        _fit_forwarding(trainer, reports, report)
    finally:
        reports.shutdown()
    if failures:
        raise TrialFailedError(f"{failures[-1]['type']}: {failures[-1]['message']}")


def upload_code(code_dir: Path) -> str:
    """``code_dir`` in the cluster's package store, as a URI any node's ranks can fetch (a local path would
    have to exist on the node that starts the ranks)."""
    from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

    return str(upload_working_dir_if_needed({"working_dir": str(code_dir)}, include_gitignore=False)["working_dir"])


def check_fits(plan: JobPlan, resources: dict[str, float]) -> int:
    """How many trials may run at once; ClusterTooSmallError when not even one fits the cluster."""
    cpus = plan.cpus_per_trial() + TRIAL_ACTOR_CPUS
    gpus = plan.processes * plan.resources["gpus"]
    have_cpus, have_gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    if cpus > have_cpus or gpus > have_gpus:
        raise ClusterTooSmallError(
            f"a trial needs {plan.processes} processes x {plan.resources['cpus']:g} CPUs"
            + (f" and {gpus:g} GPUs" if gpus else "")
            + f"; the Ray cluster has {have_cpus:g} CPUs and {have_gpus:g} GPUs"
        )
    fit = math.floor(have_cpus / cpus)
    if gpus > 0:
        fit = min(fit, math.floor(have_gpus / gpus))
    wanted = plan.sweep.max_concurrent_trials if plan.sweep and plan.sweep.max_concurrent_trials else fit
    return max(1, min(wanted, fit))


def run_plan(
    plan: JobPlan,
    sink: TrialSink,
    settings: RaySettings,
    *,
    job_storage: storage.JobStorage,
    attempt: int,
    options: RunOptions,
    indices: list[int],
    code_dir: Path | None = None,
) -> None:
    """Run the trials ``indices`` of ``plan`` to their end (or until the sink asks to stop); ``code_dir``: the
    job's unpacked shipped code, which every rank gets as its working directory."""
    import ray
    from ray import tune

    from flatmtl.workers.worker.callbacks import Bridge, StopWhenAsked

    ensure_ray(settings)
    concurrent = check_fits(plan, ray.cluster_resources())
    sweep = plan.sweep
    pbt = sweep is not None and sweep.scheduler.name == "pbt"
    payload = TrialPayload(
        trials={trial.index: trial for trial in plan.trials if trial.index in indices},
        base=sweep.base if sweep else None,
        config_paths=tuple(search.config_paths(sweep)),
        search=sweep.search if sweep else "grid",
        pbt=pbt,
        options=options,
        cpus=plan.resources["cpus"],
        gpus=plan.resources["gpus"],
        attempt=attempt,
        job_id=plan.job_id,
        storage=job_storage,
        collective_timeout_s=settings.collective_timeout_s,
        train_max_failures=settings.train_max_failures,
        working_dir=None if code_dir is None else upload_code(code_dir),
    )
    filesystem, root = job_storage.resolve()

    def release(index: int) -> None:
        release_placement_group(placement_group_key(plan.job_id, index))

    trainable = tune.with_resources(tune.with_parameters(run_trial, payload=payload), {"cpu": TRIAL_ACTOR_CPUS})
    optuna = sweep is not None and sweep.search == "optuna"
    tuner = tune.Tuner(
        trainable,
        param_space=search.param_space(plan, indices),
        tune_config=tune.TuneConfig(
            metric=sweep.metric if sweep else None,
            mode=sweep.mode if sweep else None,
            scheduler=search.scheduler(plan),
            search_alg=search.search_algorithm(plan),
            num_samples=len(indices) if optuna else 1,
            max_concurrent_trials=concurrent,
            time_budget_s=settings.job_timeout_s,
            reuse_actors=False,
            trial_name_creator=search.TrialNamer(indices),
        ),
        run_config=tune.RunConfig(
            name=f"tune-attempt-{attempt}",
            storage_path=f"{root}/tune",
            storage_filesystem=filesystem,
            stop=StopWhenAsked(sink),
            callbacks=[Bridge(sink, release)],
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=0,
        ),
    )
    try:
        tuner.fit()
    finally:
        for index in indices:
            release(index)
