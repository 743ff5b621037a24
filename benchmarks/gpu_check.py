"""Verification run for a machine with a GPU: what the CPU-only CI cannot check, as one JSON report.

Every stage runs in its own subprocess with a timeout (a hung NCCL call or a CUDA fault ends that stage, not the
run), and the whole run is kept under ``--budget`` seconds (default 540). Stages:

- ``environment``: torch, CUDA, cuDNN, NCCL and DeepSpeed versions, the GPU, bfloat16 support. TF32 is off in
  every stage, so CUDA and CPU float32 results are comparable.
- ``core_parity``: every aggregator x wrapper (EW weighting) on a tiny MLP and a BatchNorm CNN, on CUDA and on the
  CPU from the same weights and batch: CUDA gradients finite, and within 1e-4 (relative to the update's norm) of
  the CPU's for methods that draw nothing at random; host syncs of one step outside diagnostics counted with
  ``torch.cuda.set_sync_debug_mode`` (EW + MGDA + SAMO is the headline number).
- ``state_round_trips``: every weighting, aggregator and wrapper saved after three CUDA steps, loaded as a
  checkpoint is (CPU file, state moved to the device), and stepped once more beside the original; and a state
  saved on the CPU resumed on CUDA.
- ``trainer``: the local trainer on CUDA in fp32 and bf16 (``deterministic``): a run stopped and resumed from its
  checkpoint against one that never stopped, and a run whose batches 2 loader processes collate against one thread;
  host syncs of a whole training step (EW + MGDA + SAMO on LeNet) outside diagnostics.
- ``loader``: CelebA-sized JPEGs read per sample by loader processes: the thread's batches in the plan's order
  (from an epoch's start and from a resumed position), pinned on CUDA, and an epoch's time with 0, 2 and 4 workers.
- ``bf16_trunk``: per-task gradients of an MLP trunk run under bfloat16 autocast, by the linear trunk's products
  against the vmapped backward: within bfloat16's precision, in float32, host syncs counted, and both timed.
- ``nccl``: one NCCL rank: every collective the engine uses, zero1-3 against the unsharded run, SAMO's step time
  with and without sharding (layer-wise norms over shards).
- ``deepspeed``: DeepSpeed ZeRO 1-3 on ``cuda:0`` against the engine's own partitions.
- ``step_costs``: median step time and peak GPU memory of every wrapper on LeNet and the MLP, beside the CPU's.

    .venv/bin/python benchmarks/gpu_check.py [--out runs/gpu_check.json] [--stage NAME ...] [--device cpu]

Without CUDA only ``environment`` runs and the others are reported as skipped; ``--device cpu`` runs every stage
on the CPU (gloo for NCCL), which checks the script itself, not the GPU. Exit status 1 when a stage failed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

STAGE_SECONDS = {
    "environment": 60,
    "core_parity": 180,
    "state_round_trips": 90,
    "trainer": 150,
    "loader": 90,
    "bf16_trunk": 60,
    "nccl": 120,
    "deepspeed": 180,
    "step_costs": 90,
}
RANDOM_METHODS = {"pcgrad", "gradvac", "graddrop", "rgw", "samo", "rlw"}
"""Methods that draw from the step's generator: CPU and CUDA generators give different draws."""
PARITY_TOLERANCE = 1e-4
NUM_TASKS = 3
BATCH = 16


# ---- models -------------------------------------------------------------------------------------------
class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(16, 1) for _ in range(NUM_TASKS))

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters())

    def task_parameters(self) -> list[list[nn.Parameter]]:
        return [list(head.parameters()) for head in self.heads]

    def losses_and_representation(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        features = self.trunk(x)
        predictions = torch.cat([head(features) for head in self.heads], dim=1)
        return ((predictions - y) ** 2).mean(dim=0), features


class BatchNormCNN(TinyMLP):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(8 * 4 * 4, 16),
            nn.Tanh(),
        )


def _problem(kind: str, device: torch.device) -> tuple[TinyMLP, Tensor, Tensor]:
    torch.manual_seed(0)
    model: TinyMLP = TinyMLP() if kind == "mlp" else BatchNormCNN()
    generator = torch.Generator().manual_seed(1)
    shape = (BATCH, 8) if kind == "mlp" else (BATCH, 1, 8, 8)
    x, y = torch.randn(*shape, generator=generator), torch.randn(BATCH, NUM_TASKS, generator=generator)
    return model.to(device), x.to(device), y.to(device)


def _closure(model: TinyMLP, x: Tensor, y: Tensor, representation: bool) -> Callable[[], Any]:
    def closure() -> Any:
        losses, features = model.losses_and_representation(x, y)
        return (losses, features) if representation else losses

    return closure


def _shared_grad(model: TinyMLP) -> Tensor:
    return torch.cat([p.grad.flatten() for p in model.shared_parameters() if p.grad is not None])


def _names(kind: str) -> list[str]:
    from flatmtl.workers import mtl

    return [method.name for method in mtl.methods(kind)]  # type: ignore[arg-type]


_partial: Path | None = None
"""Where a running stage leaves what it has so far, so that a stage cut off by its timeout still reports."""


def _save_partial(result: dict[str, Any]) -> None:
    if _partial is not None:
        _write_json(_partial, {**result, "partial": True})


def _write_json(path: Path, value: dict[str, Any]) -> None:
    """Whole or not at all: a stage killed by its timeout mid-write leaves the previous result readable."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(value, default=str))
    os.replace(temporary, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _counted_syncs(device: torch.device, run: Callable[[], Any]) -> int | None:
    """Synchronizing CUDA calls made by ``run`` (None on the CPU, where nothing waits)."""
    if device.type != "cuda":
        run()
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(warning.message) for warning in caught)


# ---- stages -------------------------------------------------------------------------------------------
def stage_environment(device: torch.device) -> dict[str, Any]:
    found: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "device": str(device),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
    }
    if torch.cuda.is_available():
        found.update(
            gpus=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            capability=list(torch.cuda.get_device_capability(0)),
            cudnn=torch.backends.cudnn.version(),
            nccl=".".join(map(str, torch.cuda.nccl.version())),
            bf16=torch.cuda.is_bf16_supported(),
        )
    try:
        import deepspeed

        found["deepspeed"] = deepspeed.__version__
    except ImportError:
        found["deepspeed"] = None
    return found


def stage_core_parity(device: torch.device) -> dict[str, Any]:
    from flatmtl.workers import mtl

    rows, failures = [], []
    for kind in ("mlp", "cnn"):
        for aggregator in _names("aggregator"):
            for wrapper in _names("wrapper"):
                uses_representation = mtl.spec("aggregator", aggregator).factory.uses_representation
                grads = {}
                syncs = None
                for where in (torch.device("cpu"), device):
                    model, x, y = _problem(kind, where)
                    step = mtl.MTLStep.from_model(model, aggregator=aggregator, wrapper=wrapper, diagnostics_every=2)
                    closure = _closure(model, x, y, uses_representation)
                    step(closure)
                    grads[where.type] = _shared_grad(model).double().cpu()
                    model.zero_grad()
                    if where == device:
                        syncs = _counted_syncs(device, lambda step=step, closure=closure: step(closure))
                finite = bool(torch.isfinite(grads[device.type]).all())
                scale = max(float(grads["cpu"].norm()), 1e-12)
                difference = float((grads[device.type] - grads["cpu"]).norm()) / scale
                compared = aggregator not in RANDOM_METHODS and wrapper not in RANDOM_METHODS
                row = {
                    "model": kind,
                    "aggregator": aggregator,
                    "wrapper": wrapper,
                    "finite": finite,
                    "relative_difference": difference,
                    "compared": compared,
                    "syncs_per_step": syncs,
                }
                rows.append(row)
                if not finite or (compared and difference > PARITY_TOLERANCE):
                    failures.append(row)
                _save_partial({"combinations": len(rows), "failures": failures})
    headline = [r for r in rows if (r["aggregator"], r["wrapper"]) == ("mgda", "samo")]
    return {
        "combinations": len(rows),
        "failures": failures,
        "ew_mgda_samo_syncs": {r["model"]: r["syncs_per_step"] for r in headline},
        "max_syncs": max((r["syncs_per_step"] or 0) for r in rows),
        "syncs": {f"{r['model']}/{r['aggregator']}/{r['wrapper']}": r["syncs_per_step"] for r in rows},
        "ok": not failures,
    }


def stage_state_round_trips(device: torch.device) -> dict[str, Any]:
    import io

    from flatmtl.workers import mtl
    from flatmtl.workers.mtl.step import state_on_device

    methods = [("weighting", n) for n in _names("weighting")] + [("aggregator", n) for n in _names("aggregator")]
    methods += [("wrapper", n) for n in _names("wrapper")]
    failures = []
    for kind, name in methods:
        chosen = {"weighting": "ew", "aggregator": "mean", "wrapper": "none", kind: name}
        uses_representation = mtl.spec("aggregator", chosen["aggregator"]).factory.uses_representation
        try:
            for source in (device, torch.device("cpu")):
                model, x, y = _problem("mlp", source)
                step = mtl.MTLStep.from_model(model, seed=0, **chosen)
                for _ in range(3):
                    model.zero_grad()
                    step(_closure(model, x, y, uses_representation))
                buffer = io.BytesIO()
                torch.save({"state": step.state_dict(), "learned": [p.detach() for p in step.parameters()]}, buffer)
                buffer.seek(0)
                saved = torch.load(buffer, map_location="cpu", weights_only=True)
                twin, tx, ty = _problem("mlp", device)
                twin.load_state_dict({k: v.to(device) for k, v in model.state_dict().items()})
                resumed = mtl.MTLStep.from_model(twin, seed=0, **chosen)
                resumed.load_state_dict(state_on_device(saved["state"], device))
                with torch.no_grad():
                    for param, value in zip(resumed.parameters(), saved["learned"], strict=True):
                        param.copy_(value)
                twin.zero_grad()
                resumed(_closure(twin, tx, ty, uses_representation))
                after = _shared_grad(twin)
                if not bool(torch.isfinite(after).all()):
                    raise RuntimeError(f"non-finite gradients after resuming from {source.type}")
                if source == device:
                    model.zero_grad()
                    step(_closure(model, x, y, uses_representation))
                    difference = float((after - _shared_grad(model)).abs().max())
                    if name not in RANDOM_METHODS and difference > 1e-6:
                        raise RuntimeError(f"resumed step differs by {difference:.3g}")
        except Exception as error:  # every method is tried; the report lists each failure
            failures.append({"kind": kind, "name": name, "error": f"{type(error).__name__}: {error}"})
    return {"methods": len(methods), "failures": failures, "ok": not failures}


def _spec(**fields: Any) -> dict[str, Any]:
    """The trainer stages' run: EW + MGDA + SAMO on LeNet over a few hundred digit canvases, deterministic."""
    return {
        "problem": "multi_digits",
        "problem_options": {"train_size": 256, "test_size": 64},
        "model": "lenet",
        "epochs": 2,
        "batch_size": 32,
        "seed": 3,
        "method": {"weighting": "ew", "aggregator": "mgda", "wrapper": "samo"},
        "deterministic": True,
        **fields,
    }


def _train(root: Path, name: str, device: torch.device, *, max_steps: int | None = None, **fields: Any) -> Any:
    from flatmtl.workers.training import RunOptions, train

    spec = _spec(**fields)
    where: Any = device.type
    result = train(spec, root / name, options=RunOptions(device=where, plots=False, max_steps=max_steps))
    if max_steps is not None:  # stopped with a checkpoint: resume it to the end
        result = train(spec, root / name, options=RunOptions(device=where, plots=False), resume=True)
    return result


def _final_model(result: Any) -> dict[str, Tensor]:
    from flatmtl.workers.training import RunDirectory
    from flatmtl.workers.training.checkpoint import load

    return load(RunDirectory(result.run_dir).latest)["model"]


def _max_difference(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)


def _step_seconds(result: Any) -> float:
    """Median step time of a run, its first (warm-up) step left out."""
    from flatmtl.workers.training import RunDirectory

    lines = RunDirectory(result.run_dir).step_metrics.read_text().splitlines()
    return statistics.median(json.loads(line)["step_seconds"] for line in lines[1:] or lines)


def _trainer_step_syncs(root: Path, device: torch.device, precision: str) -> int | None:
    """Host syncs of a whole training step outside diagnostics (the MTL step, the optimizer's update, the
    schedule and the step's metrics), after a diagnostics step and the step on which ``auto`` chooses its path."""
    from flatmtl.service.specs.train import TrainSpec
    from flatmtl.workers.training import RunDirectory, RunOptions
    from flatmtl.workers.training.data import collate, to_device
    from flatmtl.workers.training.trainer import RankContext, Trainer

    run = RunDirectory(root / f"syncs-{precision}")
    run.create()
    spec = TrainSpec.model_validate(_spec(precision=precision))
    trainer = Trainer(spec, run, RunOptions(device=device.type, plots=False), RankContext(device=device))
    inputs, targets = to_device(collate(trainer.train_data, list(range(32))), device, trainer.dtype)
    for _ in range(2):
        trainer._take_step(inputs, targets)
    return _counted_syncs(device, lambda: trainer._take_step(inputs, targets))


def stage_trainer(device: torch.device) -> dict[str, Any]:
    found: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        root = Path(scratch)
        found["step_syncs"] = {
            precision: _trainer_step_syncs(root, device, precision) for precision in ("fp32", "bf16")
        }
        for precision in ("fp32", "bf16"):
            whole = _train(root, f"whole-{precision}", device, precision=precision)
            resumed = _train(root, f"resumed-{precision}", device, max_steps=5, precision=precision)
            found[precision] = {
                "status": [whole.status, resumed.status],
                "resume_max_difference": _max_difference(_final_model(whole), _final_model(resumed)),
                "final_loss": whole.summary["final"].get("train/loss"),
            }
            if precision == "fp32":
                workers = _train(root, "workers-fp32", device, max_steps=5, precision=precision, loader_workers=2)
                found["loader_workers_max_difference"] = _max_difference(_final_model(whole), _final_model(workers))
        differences = [found[p]["resume_max_difference"] for p in ("fp32", "bf16")]
        found["ok"] = max(differences) == 0.0 and found["loader_workers_max_difference"] == 0.0
    return found


def _jpeg_dataset(root: Path, count: int) -> Any:
    """CelebA's own per-sample dataset over ``count`` random 178x218 JPEGs (its images' size), resized to 64."""
    import numpy as np
    from PIL import Image

    from flatmtl.workers.problems.celeba import CelebADataset

    rng = np.random.default_rng(0)
    files = []
    for index in range(count):
        name = f"{index:06d}.jpg"
        Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(root / name, quality=90)
        files.append(name)
    return CelebADataset(root, files, rng.integers(0, 2, (count, 40)).astype(np.uint8), 64)


def stage_loader(device: torch.device) -> dict[str, Any]:
    from flatmtl.workers.training.data import BatchPlan, ProcessPrefetcher, prefetch

    found: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        dataset = _jpeg_dataset(Path(scratch), 512)
        plan = BatchPlan(len(dataset), 64, seed=0)
        same = True
        for start in (0, 3):
            with prefetch(dataset, plan.batches(1, start), device, torch.float32, 0) as loaded:
                threaded = [(b, x.cpu(), [t.cpu() for t in y]) for b, _, (x, y) in loaded]
            with prefetch(dataset, plan.batches(1, start), device, torch.float32, 2) as loaded:
                processes = [(b, x.cpu(), [t.cpu() for t in y]) for b, _, (x, y) in loaded]
            same = same and [b for b, _, _ in threaded] == [b for b, _, _ in processes]
            for (_, x, y), (_, x2, y2) in zip(threaded, processes, strict=True):
                same = same and torch.equal(x, x2) and all(torch.equal(a, b) for a, b in zip(y, y2, strict=True))
        found["same_batches_in_order"] = same
        with ProcessPrefetcher(dataset, plan.batches(0), device, torch.float32, 2) as loaded:
            host_x, _ = next(iter(loaded.loader))
            found["pinned"] = host_x.is_pinned()
        seconds: dict[str, list[float]] = {}
        for _ in range(2):
            for workers in (0, 2, 4):
                started = time.perf_counter()
                with prefetch(dataset, plan.batches(0), device, torch.float32, workers) as loaded:
                    for _batch, _indices, (x, _y) in loaded:
                        x.sum()  # stands for the step that takes the batch
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                seconds.setdefault(str(workers), []).append(time.perf_counter() - started)
        found["epoch_seconds"] = {workers: min(times) for workers, times in seconds.items()}
        found["samples"] = len(dataset)
    found["ok"] = same and (found["pinned"] or device.type != "cuda")
    return found


def stage_bf16_trunk(device: torch.device) -> dict[str, Any]:
    from flatmtl.workers.mtl import linear_trunk
    from flatmtl.workers.mtl.flat import FlatParams
    from flatmtl.workers.mtl.task_gradients import TaskGradientEngine

    torch.manual_seed(0)
    trunk = nn.Sequential(
        nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.GELU(), nn.Linear(1024, 256), nn.Tanh()
    ).to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        source = trunk(torch.randn(256, 256, device=device))
    rows = torch.randn(8, *source.shape, device=device, dtype=source.dtype)
    shared = FlatParams(list(trunk.parameters()))
    found: dict[str, Any] = {"source_dtype": str(source.dtype), "plan": linear_trunk.plan(source, shared) is not None}
    engines = {"products": TaskGradientEngine("batched"), "vmapped": TaskGradientEngine("batched")}
    engines["vmapped"].linear_trunk = False
    results = {
        name: engine.flat_backward([source], [rows], shared, retain_graph=True) for name, engine in engines.items()
    }
    scale = float(results["vmapped"].double().norm())
    found["relative_difference"] = float((results["products"] - results["vmapped"]).double().norm()) / scale
    found["dtype"] = str(results["products"].dtype)
    found["syncs_products"] = _counted_syncs(
        device, lambda: engines["products"].flat_backward([source], [rows], shared, retain_graph=True)
    )
    seconds: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(5):
        for name, engine in engines.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            engine.flat_backward([source], [rows], shared, retain_graph=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds[name].append(time.perf_counter() - started)
    found["median_ms"] = {name: 1000 * statistics.median(times[1:]) for name, times in seconds.items()}
    found["ok"] = found["plan"] and found["dtype"] == "torch.float32" and found["relative_difference"] < 1e-2
    return found


def _collectives_rank(rank: int, world_size: int, out: str) -> None:
    import torch.distributed as dist

    from flatmtl.workers.engine import Collectives

    device = torch.device("cuda", rank) if dist.get_backend() == "nccl" else torch.device("cpu")
    collectives = Collectives()
    checks = {}
    summed = collectives.all_reduce_sum_(torch.arange(4.0, device=device))
    checks["all_reduce"] = torch.equal(summed.cpu(), torch.arange(4.0) * world_size)
    stacked = torch.arange(4.0 * world_size, device=device)
    shard = torch.empty(4, device=device)
    collectives.reduce_scatter_sum(shard, stacked)
    checks["reduce_scatter"] = torch.equal(shard.cpu(), torch.arange(4.0) + 4 * rank)
    gathered = torch.empty(4 * world_size, device=device)
    collectives.all_gather(gathered, torch.full((4,), float(rank), device=device))
    checks["all_gather"] = torch.equal(gathered.cpu(), torch.arange(world_size).repeat_interleave(4).float())
    objects: list[Any] = [None] * world_size
    dist.all_gather_object(objects, {"rank": rank})
    checks["all_gather_object"] = objects == [{"rank": r} for r in range(world_size)]
    flag = torch.tensor([1.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    checks["all_reduce_max"] = float(flag) == 1.0
    if rank == 0:
        Path(out).write_text(json.dumps(checks))


def stage_nccl(device: torch.device) -> dict[str, Any]:
    from flatmtl.workers.engine import launch

    found: dict[str, Any] = {}
    backend = "nccl" if device.type == "cuda" else "gloo"
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        root = Path(scratch)
        out = root / "collectives.json"
        launch(_collectives_rank, 1, str(out), backend=backend, timeout_s=60)
        found["collectives"] = json.loads(out.read_text())
        plain = _train(root, "plain", device, epochs=1)
        found["samo_step_seconds"] = {"none": _step_seconds(plain)}
        differences = {}
        for sharding in ("zero1", "zero2", "zero3"):
            sharded = _train(root, sharding, device, epochs=1, sharding=sharding)
            differences[sharding] = _max_difference(_final_model(plain), _final_model(sharded))
            found["samo_step_seconds"][sharding] = _step_seconds(sharded)
        found["max_difference_to_unsharded"] = differences
    found["ok"] = all(found["collectives"].values()) and max(differences.values()) <= 1e-5
    return found


def stage_deepspeed(device: torch.device) -> dict[str, Any]:
    found: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        root = Path(scratch)
        for sharding in ("zero1", "zero2", "zero3"):
            own = _train(root, f"own-{sharding}", device, epochs=1, sharding=sharding)
            theirs = _train(root, f"ds-{sharding}", device, epochs=1, sharding=sharding, sharding_backend="deepspeed")
            found[sharding] = _max_difference(_final_model(own), _final_model(theirs))
            _save_partial(found)
    found["ok"] = max(found[s] for s in ("zero1", "zero2", "zero3")) <= 1e-5
    return found


@functools.cache
def _digits() -> Any:
    from flatmtl.workers import problems

    return problems.build("multi_digits", train_size=128, test_size=32)


def _timed_steps(model_name: str, wrapper: str, device: torch.device, steps: int = 7) -> dict[str, float | None]:
    from flatmtl.workers import mtl
    from flatmtl.workers.training.data import collate, model_input, to_device

    torch.manual_seed(0)
    problem = _digits()
    model = problem.model(model_name).to(device)
    x, y = to_device(collate(problem.dataset("train"), list(range(64))), device, torch.float32)
    step = mtl.MTLStep.from_model(model, aggregator="mgda", wrapper=wrapper, diagnostics_every=10**6)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        step(lambda: problem.losses(model(model_input(x)), y))
        optimizer.step()
        optimizer.zero_grad()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"median_ms": 1000 * statistics.median(seconds[2:]), "peak_mib": peak}


def stage_step_costs(device: torch.device) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for model_name in ("lenet", "mlp"):
        for wrapper in _names("wrapper"):
            found[f"{model_name}/{wrapper}"] = {
                device.type: _timed_steps(model_name, wrapper, device),
                "cpu": _timed_steps(model_name, wrapper, torch.device("cpu")),
            }
            _save_partial(found)
    return found


STAGES: dict[str, Callable[[torch.device], dict[str, Any]]] = {
    "environment": stage_environment,
    "core_parity": stage_core_parity,
    "state_round_trips": stage_state_round_trips,
    "trainer": stage_trainer,
    "loader": stage_loader,
    "bf16_trunk": stage_bf16_trunk,
    "nccl": stage_nccl,
    "deepspeed": stage_deepspeed,
    "step_costs": stage_step_costs,
}


# ---- driver -------------------------------------------------------------------------------------------
def _run_stage(name: str, device: torch.device, out: Path) -> None:
    """In the child: TF32 off (CUDA and CPU float32 comparable), the stage, its result as JSON into ``out``."""
    global _partial
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    _partial = out
    _write_json(out, STAGES[name](device))


def _launch(name: str, device: str, seconds: float) -> dict[str, Any]:
    """The stage in a child process of its own process group: a timeout ends it with every process it started
    (NCCL ranks, loader workers), which would otherwise hold the GPU through the stages after it."""
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        out = Path(scratch) / "result.json"
        command = [sys.executable, __file__, "--run-stage", name, "--device", device, "--result", str(out)]
        started = time.perf_counter()
        stage = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        try:
            log, _ = stage.communicate(timeout=seconds)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(stage.pid, signal.SIGKILL)
        if timed_out:
            log, _ = stage.communicate()
        elapsed = round(time.perf_counter() - started, 1)
        result = _read_json(out)
        if timed_out:
            return {"status": "timeout", "seconds": elapsed, "result": result, "log": log[-4000:]}
        if stage.returncode != 0 or result is None:
            return {"status": "failed", "seconds": elapsed, "returncode": stage.returncode, "log": log[-4000:]}
        status = "ok" if result.get("ok", True) else "mismatch"
        return {"status": status, "seconds": elapsed, "result": result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_check.json"))
    parser.add_argument("--stage", action="append", choices=sorted(STAGES), help="Only these stages (repeatable).")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--budget", type=float, default=540.0, help="Seconds for the whole run.")
    parser.add_argument("--slack", type=float, default=1.0, help="Stage timeouts times this (a slow or busy host).")
    parser.add_argument("--run-stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_stage:
        _run_stage(args.run_stage, torch.device(args.device), args.result)
        return
    chosen = args.stage or list(STAGES)
    missing_cuda = args.device == "cuda" and not torch.cuda.is_available()
    if missing_cuda:
        print(
            "no CUDA device: only the environment stage runs (--device cpu runs all stages on the CPU)", file=sys.stderr
        )
    deadline = time.perf_counter() + args.budget
    report: dict[str, Any] = {"device": args.device, "stages": {}}
    for name in chosen:
        remaining = deadline - time.perf_counter()
        if missing_cuda and name != "environment":
            report["stages"][name] = {"status": "skipped", "reason": "no CUDA device"}
        elif remaining < 10:
            report["stages"][name] = {"status": "skipped", "reason": f"the {args.budget:.0f} s budget is spent"}
        else:
            report["stages"][name] = _launch(name, args.device, min(STAGE_SECONDS[name] * args.slack, remaining))
        print(f"{name}: {report['stages'][name]['status']}", file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report))
    failed = [n for n, s in report["stages"].items() if s["status"] in ("failed", "timeout", "mismatch")]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
