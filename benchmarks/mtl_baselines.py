"""The MTL step against the baselines it must beat, side by side in one run, as ratios (the machine is shared).

1. The EW family (every loss weighting with ``mean``) against plain forward + one backward of the summed
   losses: the one-backward step, the diagnostics step (per-task gradients and their Gram) and the
   cost amortized over ``diagnostics_every`` steps.
2. The whole plain step of every aggregator against the same method computed as LibMTL does: K
   sequential autograd passes through the whole graph, the [K, P] matrix, then the aggregator; both beside the
   floor of K-gradient methods where the gradients take K passes (one forward, K backwards into ``.grad``). MGDA-UB
   and GradDrop also against one backward per task from the representation; F-MTL against the authors'
   per-task loop (K points, each evaluating its own task only), and L-SAM against the same loop.
3. Every aggregator torchjd 0.18 has, on the same [K, P] (P = 100k, K = 2, 14, 40), against torchjd's call; the
   floor: the Gram (one product, and ours) and ``weights @ G``.
4. Peak memory of a step beside its time, each path in a fresh process: resident memory over the first three
   steps (one-off costs included: the code pages of kernels used for the first time, ``gradient_mode="auto"``
   measuring both paths once where its rule does not decide) and over three steps after those, and the peak of
   live tensors in one such step (the torch profiler's allocation events).
   Every SAM wrapper against its reference loop: F-MTL's and SAMO's authors' code, L-SAM the same per-task
   loop, SAM and G-SAM the two-pass SAM loop with K sequential backwards. Beside them, the per-task gradient
   path ``gradient_mode="auto"`` chose (by its rule or by timing), and the two paths timed in turn.

Paths are timed in turn within each round; figures are medians over rounds of per-round ratios, one thread. Part
1 times the thread's CPU time (its steps run on that one thread), not wall time that other processes' slices
of a shared machine would add to.
Needs the ``bench`` extra (torchjd).

    python benchmarks/mtl_baselines.py [--rounds 9] [--only ew|steps|sam|torchjd|memory]

``--only sam`` times F-MTL and L-SAM against the per-task loop alone (part of ``steps``).
"""

from __future__ import annotations

import argparse
import copy
import functools
import math
import multiprocessing
import os
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.mtl_core import Setting, gradient_paths, interleaved_seconds, median_ratio, settings
from flatmtl.workers import mtl
from flatmtl.workers.mtl.base import gram_matrix
from flatmtl.workers.mtl.step import DEFAULT_DIAGNOSTICS_EVERY
from flatmtl.workers.problems.tasks import stack_losses

EW_FAMILY = ("ew", "uw", "imtl_l", "rlw", "dwa", "famo", "gls", "si")
REPRESENTATION_METHODS = ("mgda_ub", "graddrop")
TORCHJD = {  # our name -> torchjd 0.18 class name and keyword arguments for the same method
    "mean": ("Mean", {}),
    "upgrad": ("UPGrad", {}),
    "mgda": ("MGDA", {}),
    "pcgrad": ("PCGrad", {}),
    "imtl_g": ("IMTLG", {}),
    "aligned_mtl": ("AlignedMTL", {}),
    "graddrop": ("GradDrop", {}),
    "cagrad": ("CAGrad", {"c": 0.4}),
    "nash_mtl": ("NashMTL", {}),
    "config": ("ConFIG", {}),
    "fairgrad": ("FairGrad", {"alpha": 1.0}),
    "gradvac": ("GradVac", {}),
}


# ---- 1. the EW family against plain backprop ---------------------------------------------------------------


def plain_backprop(setting: Setting) -> Callable[[], None]:
    def run() -> None:
        setting.model.zero_grad(set_to_none=True)
        setting.task_losses().sum().backward()

    return run


def ew_family(setting: Setting, rounds: int) -> dict[str, float]:
    """Per weighting: the one-backward step, the diagnostics step and the amortized ratio to plain backprop.

    The one-backward steps and the diagnostics steps are timed in separate rounds, each against plain backprop:
    a run that follows a diagnostics step meets the caches and the allocator its [K, P] buffers left, which plain
    backprop, timed beside it, would meet only at times."""
    plain = plain_backprop(setting)
    block = 10 if len(setting.tasks) > 2 else 1  # steps per timing on the millisecond-step MLP, against timer noise
    fast_runs: dict[str, Callable[[], object]] = {"plain": lambda: [plain() for _ in range(block)]}
    diagnostics_runs = dict(fast_runs)
    for weighting in EW_FAMILY:
        fast = mtl.MTLStep.from_model(setting.model, weighting=weighting)
        fast.steps_taken = 1  # past the first (diagnostics) step
        every = mtl.MTLStep.from_model(setting.model, weighting=weighting, diagnostics_every=1)
        fast_runs[weighting] = lambda step=fast: [step(setting.task_losses) for _ in range(block)]
        diagnostics_runs[weighting] = lambda step=every: [step(setting.task_losses) for _ in range(block)]
    # CPU time of the one thread the steps run on: the step's own work
    fast_times = interleaved_seconds(fast_runs, rounds, clock=time.thread_time)
    diagnostics_times = interleaved_seconds(diagnostics_runs, rounds, clock=time.thread_time)
    plain_ms = statistics.median(fast_times["plain"]) * 1e3 / block
    print(f"{'weighting':<12}{'one backward':>14}{'diagnostics':>13}{'amortized':>11}")
    print(f"(x plain fwd+bwd {plain_ms:.2f} ms thread CPU time; diagnostics every {DEFAULT_DIAGNOSTICS_EVERY} steps)")
    amortized = {}
    for weighting in EW_FAMILY:
        fast = median_ratio(fast_times[weighting], fast_times["plain"])
        diagnostics = median_ratio(diagnostics_times[weighting], diagnostics_times["plain"])
        amortized[weighting] = (fast * (DEFAULT_DIAGNOSTICS_EVERY - 1) + diagnostics) / DEFAULT_DIAGNOSTICS_EVERY
        print(f"{weighting:<12}{fast:>14.3f}{diagnostics:>13.2f}{amortized[weighting]:>11.3f}")
    return amortized


# ---- 2. whole steps against LibMTL's loop -----------------------------------------------------------------


def libmtl_step(setting: Setting, aggregator: mtl.Aggregator) -> Callable[[], None]:
    """LibMTL's loop, transcribed: K backward passes through the whole graph (each also fills its head's
    gradient), the shared parameters' gradients flattened into [K, P], the aggregator, the update written back."""
    shared = list(setting.model.shared_parameters())
    generator = torch.Generator().manual_seed(0)

    def run() -> None:
        setting.model.zero_grad(set_to_none=True)
        losses = setting.task_losses()
        rows = []
        for task in range(losses.shape[0]):
            losses[task].backward(retain_graph=task < losses.shape[0] - 1)
            rows.append(torch.cat([p.grad.reshape(-1) for p in shared]))
            for param in shared:
                param.grad = None
        grads = torch.stack(rows)
        update = aggregator(grads, losses=losses.detach(), generator=generator)
        for param, piece in zip(shared, update.split([p.numel() for p in shared]), strict=True):
            param.grad = piece.view_as(param)

    return run


def representation_step(setting: Setting, aggregator: mtl.Aggregator) -> Callable[[], None]:
    """One backward per task from the shared representation (LibMTL's ``rep_grad`` mode), the aggregator's
    output gradient of the representation, one backward of it through the trunk; heads in one backward."""
    model = setting.model
    generator = torch.Generator().manual_seed(0)
    heads = [p for head in model.task_parameters() for p in head]

    def run() -> None:
        model.zero_grad(set_to_none=True)
        representation = model.encoder(setting.x)
        cut = representation.detach().requires_grad_()
        losses = stack_losses(setting.tasks, [head(cut) for head in model.heads], setting.targets)
        rows = torch.stack([torch.autograd.grad(losses[k], cut, retain_graph=True)[0] for k in range(losses.shape[0])])
        torch.autograd.grad(losses.sum(), heads)
        combined = aggregator.combine_representation(
            [rows], [representation], losses=losses.detach(), generator=generator, reduce_gram=lambda g: g
        )
        representation.backward(combined[0])

    return run


def gradient_floor(setting: Setting) -> Callable[[], None]:
    """What every method that needs K per-task gradients pays where they take K passes (a convolutional trunk at
    small K): one forward and K backwards through the whole graph into ``.grad``, with no [K, P] matrix, no
    aggregation and no update. Both the step and LibMTL's loop are this plus their own overhead."""

    def run() -> None:
        setting.model.zero_grad(set_to_none=True)
        losses = setting.task_losses()
        for task in range(losses.shape[0]):
            losses[task].backward(retain_graph=task < losses.shape[0] - 1)

    return run


def whole_steps(setting: Setting, rounds: int, methods: list[str]) -> dict[str, float]:
    header = f"{'aggregator':<14}{'x LibMTL loop':>14}{'x rep. loop':>13}{'ms/step':>10}"
    print(f"{header}{'x floor':>9}{'LibMTL x floor':>16}")
    ratios = {}
    for name in methods:
        step = mtl.MTLStep.from_model(setting.model, aggregator=name)
        step.steps_taken = 1
        runs: dict[str, Callable[[], object]] = {
            "ours": lambda step=step: step(setting.task_losses),
            "libmtl": libmtl_step(setting, mtl.aggregator(name)),
            "floor": gradient_floor(setting),
        }
        if name in REPRESENTATION_METHODS:
            runs["representation"] = representation_step(setting, mtl.aggregator(name))
        times = interleaved_seconds(runs, rounds, warmup=3)  # past gradient_mode="auto"'s measuring step
        ratios[name] = median_ratio(times["ours"], times["libmtl"])
        rep = (
            f"{median_ratio(times['ours'], times['representation']):>13.2f}" if "representation" in times else " " * 13
        )
        ratios[f"{name}/rep"] = median_ratio(times["ours"], times["representation"]) if "representation" in times else 0
        ratios[f"{name}/floor"] = median_ratio(times["ours"], times["floor"])
        ratios[f"{name}/libmtl_floor"] = median_ratio(times["libmtl"], times["floor"])
        print(
            f"{name:<14}{ratios[name]:>14.2f}{rep}{statistics.median(times['ours']) * 1e3:>10.2f}"
            f"{ratios[f'{name}/floor']:>9.2f}{ratios[f'{name}/libmtl_floor']:>16.2f}"
        )
    return ratios


def authors_fmtl_step(setting: Setting, rho: float = 0.05, *, joint_norm: bool = False) -> Callable[[], None]:
    """F-MTL as the authors' loop does it, transcribed: per-task gradients at theta by K backwards, then for
    each task its own point (shared parameters and its head moved by rho times its normalized gradients),
    a forward of the trunk and that task's head only, one backward, the parameters put back; the loss parts
    and the flat parts averaged separately (the ``mean`` aggregator) and added. ``joint_norm``: one norm over
    the shared and head gradients (L-SAM's point), whose update the same mean gives."""
    model = setting.model
    shared = list(model.shared_parameters())
    heads = [list(head) for head in model.task_parameters()]

    def task_loss(task: int) -> Tensor:
        output = model.heads[task](model.encoder(setting.x))
        return setting.tasks[task].kind.loss(output, setting.targets[task])

    def offsets(parts: list[tuple[Tensor, ...]]) -> list[Tensor]:
        norm = torch.sqrt(sum(g.pow(2).sum() for part in parts for g in part)) + 1e-12
        return [g * (rho / norm) for part in parts for g in part]

    def run() -> None:
        losses = setting.task_losses()
        num_tasks = losses.shape[0]
        loss_parts, head_grads = [], []
        for task in range(num_tasks):
            grads = torch.autograd.grad(losses[task], [*shared, *heads[task]], retain_graph=task < num_tasks - 1)
            loss_parts.append(grads[: len(shared)])
            head_grads.append(grads[len(shared) :])
        flat_parts, sam_heads = [], []
        for task in range(num_tasks):
            moved = [*shared, *heads[task]]
            parts = [loss_parts[task], head_grads[task]]
            steps = offsets(parts) if joint_norm else [g for part in parts for g in offsets([part])]
            with torch.no_grad():
                torch._foreach_add_(moved, steps)
            grads = torch.autograd.grad(task_loss(task), moved)
            with torch.no_grad():
                torch._foreach_sub_(moved, steps)
            flat_parts.append([a - b for a, b in zip(grads[: len(shared)], loss_parts[task], strict=True)])
            sam_heads.append(grads[len(shared) :])
        for index, param in enumerate(shared):
            loss_mean = sum(part[index] for part in loss_parts) / num_tasks
            param.grad = loss_mean + sum(part[index] for part in flat_parts) / num_tasks
        for task in range(num_tasks):
            for param, grad in zip(heads[task], sam_heads[task], strict=True):
                param.grad = grad

    return run


def authors_samo_step(setting: Setting, rho: float = 1e-3, beta: float = 0.5, eps: float = 0.01) -> Callable[[], None]:
    """SAMO as the authors' trainer does it, transcribed: one backward of the mean loss; per task a copy of
    the model, two forwards without graph at its shared parameters moved by +-eps along a Gaussian direction
    and the zeroth-order estimate kept per parameter; per task the offsets of its head (along its gradient)
    and of the shared parameters (``(1 - beta) g + beta`` times the estimate rescaled to g's layer norms),
    each normalized to rho, all kept; per task a forward of every task at its point and a backward of its
    own loss; the mean of the K SAM gradients."""
    model = setting.model
    shared = list(model.shared_parameters())
    heads = [list(head) for head in model.task_parameters()]
    generator = torch.Generator().manual_seed(0)

    def estimate(task: int) -> list[Tensor]:
        clone = copy.deepcopy(model)
        moved = list(clone.shared_parameters())
        directions = [torch.randn(p.shape, generator=generator) for p in moved]
        with torch.no_grad():
            torch._foreach_add_(moved, directions, alpha=eps)
            plus = stack_losses(setting.tasks, list(clone(setting.x)), setting.targets)[task]
            torch._foreach_add_(moved, directions, alpha=-2 * eps)
            minus = stack_losses(setting.tasks, list(clone(setting.x)), setting.targets)[task]
        return [d * ((plus - minus) / (2 * eps)) for d in directions]

    def scaled(vectors: list[Tensor]) -> list[Tensor]:
        norm = torch.sqrt(sum(v.pow(2).sum() for v in vectors)) + 1e-12
        return [v * (rho / norm) for v in vectors]

    def run() -> None:
        model.zero_grad(set_to_none=True)
        setting.task_losses().mean().backward()
        estimates = [estimate(task) for task in range(len(heads))]
        shared_offsets, head_offsets = [], []
        for task, local in enumerate(estimates):
            mixed = [
                (1 - beta) * p.grad + beta * p.grad.norm() * z / z.norm() for p, z in zip(shared, local, strict=True)
            ]
            shared_offsets.append(scaled(mixed))
            head_offsets.append(scaled([p.grad.clone() for p in heads[task]]))
        saved = [p.detach().clone() for p in shared]
        sam_grads = []
        for task in range(len(heads)):
            with torch.no_grad():
                torch._foreach_add_(heads[task], head_offsets[task])
                for param, value, offset in zip(shared, saved, shared_offsets[task], strict=True):
                    param.copy_(value + offset)
            grads = torch.autograd.grad(setting.task_losses()[task], [*shared, *heads[task]])
            with torch.no_grad():
                torch._foreach_sub_(heads[task], head_offsets[task])
            sam_grads.append(grads[: len(shared)])
            for param, grad in zip(heads[task], grads[len(shared) :], strict=True):
                param.grad = grad
        with torch.no_grad():
            torch._foreach_copy_(shared, saved)
        for index, param in enumerate(shared):
            param.grad = sum(grads[index] for grads in sam_grads) / len(heads)

    return run


def two_pass_sam_step(setting: Setting, rho: float = 0.05, *, ascend_mean_loss: bool = False) -> Callable[[], None]:
    """SAM around a multi-task update as a SAM optimizer with LibMTL's loop does it: the update at theta (the
    mean of K sequential per-task gradients, or for G-SAM one backward of the mean loss), every parameter
    moved by rho along it normalized, K sequential per-task gradients there, their mean, parameters put back."""
    model = setting.model
    params = list(model.parameters())
    libmtl = libmtl_step(setting, mtl.aggregator("mean"))

    def run() -> None:
        if ascend_mean_loss:
            model.zero_grad(set_to_none=True)
            setting.task_losses().mean().backward()
        else:
            libmtl()
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads)) + 1e-12
        offsets = [g * (rho / norm) for g in grads]
        with torch.no_grad():
            torch._foreach_add_(params, offsets)
        libmtl()
        with torch.no_grad():
            torch._foreach_sub_(params, offsets)

    return run


def fmtl_against_authors(setting: Setting, rounds: int) -> float:
    """F-MTL's step over the authors' per-task loop, and L-SAM's over the same loop with its joint radius: the
    median of the per-round ratios and their spread. Returns F-MTL's."""
    fmtl = mtl.MTLStep.from_model(setting.model, wrapper="fmtl", wrapper_hparams={"rho_shared": 0.05, "rho_task": 0.05})
    l_sam = mtl.MTLStep.from_model(setting.model, wrapper="l_sam", wrapper_hparams={"rho": 0.05})
    runs: dict[str, Callable[[], object]] = {
        "fmtl": lambda: fmtl(setting.task_losses),
        "authors": authors_fmtl_step(setting),
        "l_sam": lambda: l_sam(setting.task_losses),
        "per-task loop": authors_fmtl_step(setting, joint_norm=True),
    }
    times = interleaved_seconds(runs, rounds, warmup=3)
    for ours, theirs, label in (("fmtl", "authors", "the authors' per-task loop"), ("l_sam", "per-task loop", "it")):
        per_round = sorted(t / r for t, r in zip(times[ours], times[theirs], strict=True))
        print(
            f"{ours} (mean) / {label}: {statistics.median(per_round):.2f} (rounds {per_round[0]:.2f}-"
            f"{per_round[-1]:.2f}; {statistics.median(times[ours]) * 1e3:.1f} vs "
            f"{statistics.median(times[theirs]) * 1e3:.1f} ms)"
        )
    return median_ratio(times["fmtl"], times["authors"])


# ---- 3. aggregators against torchjd -------------------------------------------------------------------------


def against_torchjd(rounds: int, numel: int = 100_000) -> dict[str, float]:
    import torchjd.aggregation as jd

    ratios: dict[str, float] = {}
    print(f"{'aggregator':<14}" + "".join(f"{f'K={k}':>9}" for k in (2, 14, 40)))
    for name, (cls, kwargs) in TORCHJD.items():
        row = []
        for num_tasks in (2, 14, 40):
            generator = torch.Generator().manual_seed(num_tasks)
            grads = torch.randn(num_tasks, numel, generator=generator)
            grads += 0.3 * torch.randn(1, numel, generator=generator)  # some agreement, some conflict
            extra = {"n_tasks": num_tasks} if cls == "NashMTL" else {}
            theirs = getattr(jd, cls)(**kwargs, **extra)
            ours = mtl.aggregator(name)
            losses = torch.rand(num_tasks) + 0.5
            step_generator = torch.Generator().manual_seed(0)
            times = interleaved_seconds(
                {
                    "ours": functools.partial(ours, grads, losses=losses, generator=step_generator),
                    "torchjd": functools.partial(theirs, grads),
                },
                rounds,
            )
            ratios[f"{name}/K={num_tasks}"] = median_ratio(times["ours"], times["torchjd"])
            row.append(ratios[f"{name}/K={num_tasks}"])
        print(f"{name:<14}" + "".join(f"{r:>9.2f}" for r in row))
    print("floor, ms (every Gram method pays the Gram and weights @ G; torchjd's Gram is one product):")
    for num_tasks in (2, 14, 40):
        grads = torch.randn(num_tasks, numel, generator=torch.Generator().manual_seed(num_tasks))
        weights = torch.full((num_tasks,), 1.0 / num_tasks)
        times = interleaved_seconds(
            {
                "Gram, one product": lambda grads=grads: grads @ grads.T,
                "Gram, gram_matrix": functools.partial(gram_matrix, grads),
                "weights @ G": lambda grads=grads, weights=weights: weights @ grads,
            },
            rounds,
        )
        print(f"  K={num_tasks}: " + ", ".join(f"{path} {statistics.median(t) * 1e3:.3f}" for path, t in times.items()))
    return ratios


# ---- 4. peak memory ------------------------------------------------------------------------------------------

SAM_REFERENCES = {  # each SAM wrapper's memory path -> its reference loop's
    "fmtl": "fmtl, authors' loop",
    "l_sam": "l_sam, per-task loop",
    "samo": "samo, authors' loop",
    "sam": "sam, two-pass loop",
    "g_sam": "g_sam, two-pass loop",
}
MALLOC_SETTINGS = {"MALLOC_MMAP_THRESHOLD_": "16384"}
"""glibc's fixed threshold for the children: every block from 16 KiB up is its own mapping, returned to the
system when freed, so resident memory follows the live memory (with the default's moving threshold, freed
blocks stay in the heap after a first step and later peaks hide in it; code that holds many per-parameter
tensors, as the reference loops do, would look lighter than code holding one flat matrix). Steps run slower
so: times are section 2's."""


def _resident_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def _resident_peak(run: Callable[[], object], steps: int) -> tuple[float, float]:
    """Peak resident memory above the process before ``steps`` steps (MiB), sampled every half millisecond by a
    thread (torch releases the GIL in its kernels), and seconds per step."""
    resting = _resident_mib()
    peak = [resting]
    running = threading.Event()
    running.set()

    def sample() -> None:
        while running.is_set():
            peak[0] = max(peak[0], _resident_mib())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    for _ in range(steps):
        run()
    seconds = (time.perf_counter() - started) / steps
    running.clear()
    sampler.join()
    return peak[0] - resting, seconds


def _tensor_peak(run: Callable[[], object]) -> float:
    """Peak of the tensors a step allocates above those alive before it (MiB), from the torch profiler's
    allocation events in order: the allocator's view, blind to the C library's heap and to Python objects."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        run()
    events = [event for event in profiler.profiler.kineto_results.events() if event.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda event: event.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak / 2**20


def _peak_child(setting_index: int, path: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """In a fresh process (model, data and steps built): resident peaks over the first three steps and over
    three steps after them, the tensor peak of one more step, and seconds per step after the first three."""
    torch.set_num_threads(1)
    setting = settings(256)[setting_index]
    run = _memory_paths(setting)[path]
    first, _ = _resident_peak(run, 3)
    steady, seconds = _resident_peak(run, 3)
    queue.put((first, steady, _tensor_peak(run), seconds))


def _memory_paths(setting: Setting) -> dict[str, Callable[[], object]]:
    fast = mtl.MTLStep.from_model(setting.model)
    fast.steps_taken = 1
    diagnostics = mtl.MTLStep.from_model(setting.model, diagnostics_every=1)
    upgrad = mtl.MTLStep.from_model(setting.model, aggregator="upgrad")
    paths: dict[str, Callable[[], object]] = {
        "plain fwd+bwd": plain_backprop(setting),
        "ew+mean": lambda: fast(setting.task_losses),
        "ew+mean diagnostics": lambda: diagnostics(setting.task_losses),
        "upgrad": lambda: upgrad(setting.task_losses),
        "upgrad, LibMTL loop": libmtl_step(setting, mtl.aggregator("upgrad")),
        "fmtl, authors' loop": authors_fmtl_step(setting),
        "l_sam, per-task loop": authors_fmtl_step(setting, joint_norm=True),
        "samo, authors' loop": authors_samo_step(setting),
        "sam, two-pass loop": two_pass_sam_step(setting),
        "g_sam, two-pass loop": two_pass_sam_step(setting, ascend_mean_loss=True),
    }
    for wrapper in SAM_REFERENCES:
        step = mtl.MTLStep.from_model(setting.model, wrapper=wrapper)
        step.steps_taken = 1  # past the first (diagnostics) step, as the loops take no Gram
        paths[wrapper] = functools.partial(step, setting.task_losses)
    return paths


def auto_choice(setting: Setting, rounds: int) -> float:
    """The per-task gradient path ``gradient_mode="auto"`` chose for this model, and both paths' per-task gradients
    (forward included) timed in turn; returns the chosen path's time over the other's (<= 1: it chose the faster)."""
    step = mtl.MTLStep.from_model(setting.model, aggregator="upgrad")
    for _ in range(2):
        step(setting.task_losses)
    choice = step.gradient_engine.choice
    chosen = step.gradient_engine.mode
    how = "by rule" if choice.get("gradient_mode/by_rule") else "by timing"
    paths = gradient_paths(setting, rounds)
    batched = "heads cut, linear trunk"  # the batched path a model declaring its heads takes
    ratio = median_ratio(paths[batched], paths["sequential"])
    batched_ms, sequential_ms = (statistics.median(paths[path]) * 1e3 for path in (batched, "sequential"))
    print(f"    gradient_mode=auto chose {chosen} ({how}); per-task gradients, median ms: batched {batched_ms:.1f}, "
          f"sequential {sequential_ms:.1f}, batched / sequential {ratio:.2f}")  # fmt: skip
    return ratio if chosen == "batched" else 1 / ratio


def peak_memory() -> list[tuple[str, float, float, float]]:
    """Peak memory of every path (MiB) and each SAM wrapper's ratios to its reference loop (resident memory over
    the first steps and in steady state, tensors); returns the worst ratio of each per setting for the targets."""
    context = multiprocessing.get_context("spawn")
    saved = {name: os.environ.get(name) for name in MALLOC_SETTINGS}
    os.environ.update(MALLOC_SETTINGS)
    worst = []
    try:
        for index, setting in enumerate(settings(256)):
            print(f"  {setting.name}")
            print(f"    {'':<24}{'first 3 steps':>14}{'steady':>9}{'tensors':>9}  MiB above rest{'ms/step':>10}")
            peaks = {}
            for path in _memory_paths(setting):
                queue = context.Queue()
                child = context.Process(target=_peak_child, args=(index, path, queue))
                child.start()
                first, steady, tensors, seconds = queue.get()
                child.join()
                peaks[path] = (first, steady, tensors)
                print(f"    {path:<24}{first:>14.1f}{steady:>9.1f}{tensors:>9.1f}{'':<16}{seconds * 1e3:>8.1f}")
            ratios = []
            for wrapper, reference in SAM_REFERENCES.items():
                ratios.append([peaks[wrapper][i] / max(peaks[reference][i], 0.1) for i in range(3)])
                first, steady, tensors = ratios[-1]
                print(f"    {wrapper} / {reference}: resident first 3 steps {first:.2f}, steady {steady:.2f}, "
                      f"tensors {tensors:.2f}")  # fmt: skip
            worst.append((setting.name, *(max(ratio[i] for ratio in ratios) for i in range(3))))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--only", choices=["ew", "steps", "sam", "torchjd", "memory"], default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, batch 256, median of {args.rounds} rounds, paths interleaved")
    targets = []
    if args.only in (None, "ew"):
        for setting in settings(256):
            print(f"\n== 1. EW family / plain backprop: {setting.name}")
            amortized = ew_family(setting, args.rounds)
            targets.append((f"EW family amortized, {setting.name}", max(amortized.values()), 1.10))
    if args.only in (None, "steps"):
        methods = [m.name for m in mtl.methods("aggregator")]
        for setting in settings(256):
            print(f"\n== 2. whole step / LibMTL's loop: {setting.name}")
            ratios = whole_steps(setting, max(3, args.rounds // 2), methods)
            worst = max(methods, key=lambda m: ratios[m])
            targets.append((f"every aggregator / LibMTL loop (worst), {setting.name}", ratios[worst], 1.0))
            print(
                f"floor (one forward, K backwards into .grad): the worst, {worst}, {ratios[f'{worst}/floor']:.2f}x "
                f"it, LibMTL's loop {ratios[f'{worst}/libmtl_floor']:.2f}x it"
            )
            for name in REPRESENTATION_METHODS:
                if ratios.get(f"{name}/rep"):
                    targets.append((f"{name} / rep. loop, {setting.name}", ratios[f"{name}/rep"], 1.1))
    if args.only in (None, "steps", "sam"):
        for setting in settings(256):
            print(f"\n== 2. per-task SAM / the authors' per-task loop: {setting.name}")
            targets.append((f"fmtl / authors' loop, {setting.name}", fmtl_against_authors(setting, args.rounds), 1.0))
    if args.only in (None, "torchjd"):
        print("\n== 3. aggregator call / torchjd 0.18's, P = 100k")
        ratios = against_torchjd(args.rounds)
        geometric = math.exp(statistics.mean(math.log(r) for r in ratios.values()))
        targets.append(("torchjd: worst aggregator", max(ratios.values()), 1.0))
        targets.append(("torchjd: geometric mean", geometric, 0.7))
    if args.only in (None, "memory"):
        print("\n== 4. peak memory")
        for name, first, resident, tensors in peak_memory():
            targets.append((f"SAM wrappers' first-steps resident peak / reference (worst), {name}", first, 1.2))
            targets.append((f"SAM wrappers' steady resident peak / reference (worst), {name}", resident, 1.2))
            targets.append((f"SAM wrappers' tensor peak / reference (worst), {name}", tensors, 1.2))
        for setting in settings(256):
            print(f"  {setting.name}")
            targets.append(
                (f"auto's per-task path / the other, {setting.name}", auto_choice(setting, args.rounds), 1.0)
            )
    print("\n== targets")
    for name, value, target in targets:
        print(f"{name:<60}{value:>7.2f}  (target <= {target:.2f}) {'ok' if value <= target else 'MISSED'}")


if __name__ == "__main__":
    main()
