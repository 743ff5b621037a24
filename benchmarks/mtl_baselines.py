"""The MTL step against the baselines it must beat, side by side in one run, as ratios (the machine is shared).

1. The EW family (every loss weighting with ``mean``) against plain forward + one backward of the summed
   losses: the one-backward step, the diagnostics step (per-task gradients and their Gram) and the
   cost amortized over ``diagnostics_every`` steps.
2. The whole plain step of every aggregator against the same method computed as LibMTL does: K
   sequential autograd passes through the whole graph, the [K, P] matrix, then the aggregator. MGDA-UB
   and GradDrop also against one backward per task from the representation; F-MTL against the authors'
   per-task loop (K points, each evaluating its own task only).
3. Every aggregator torchjd 0.18 has, on the same [K, P] (P = 100k, K = 2, 14, 40), against torchjd's call; the
   floor: the Gram (one product, and ours) and ``weights @ G``.
4. Peak resident memory of a step (each path in a fresh process) beside its time.

Paths are timed in turn within each round; figures are medians over rounds of per-round ratios, one thread.
Needs the ``bench`` extra (torchjd).

    python benchmarks/mtl_baselines.py [--rounds 9] [--only ew|steps|torchjd|memory]
"""

from __future__ import annotations

import argparse
import functools
import math
import multiprocessing
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

from benchmarks.mtl_core import Setting, interleaved_seconds, median_ratio, settings
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
    """Per weighting: the one-backward step, the diagnostics step and the amortized ratio to plain backprop."""
    plain = plain_backprop(setting)
    block = 10 if len(setting.tasks) > 2 else 1  # steps per timing on the millisecond-step MLP, against timer noise
    runs: dict[str, Callable[[], object]] = {"plain": lambda: [plain() for _ in range(block)]}
    for weighting in EW_FAMILY:
        fast = mtl.MTLStep.from_model(setting.model, weighting=weighting)
        fast.steps_taken = 1  # past the first (diagnostics) step
        every = mtl.MTLStep.from_model(setting.model, weighting=weighting, diagnostics_every=1)
        runs[f"{weighting}/fast"] = lambda step=fast: [step(setting.task_losses) for _ in range(block)]
        runs[f"{weighting}/diagnostics"] = lambda step=every: [step(setting.task_losses) for _ in range(block)]
    times = interleaved_seconds(runs, rounds)
    plain_ms = statistics.median(times["plain"]) * 1e3 / block
    print(f"{'weighting':<12}{'one backward':>14}{'diagnostics':>13}{'amortized':>11}")
    print(f"(x plain fwd+bwd {plain_ms:.2f} ms; diagnostics every {DEFAULT_DIAGNOSTICS_EVERY} steps)")
    amortized = {}
    for weighting in EW_FAMILY:
        fast = median_ratio(times[f"{weighting}/fast"], times["plain"])
        diagnostics = median_ratio(times[f"{weighting}/diagnostics"], times["plain"])
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


def whole_steps(setting: Setting, rounds: int, methods: list[str]) -> dict[str, float]:
    print(f"{'aggregator':<14}{'x LibMTL loop':>14}{'x rep. loop':>13}{'ms/step':>10}")
    ratios = {}
    for name in methods:
        step = mtl.MTLStep.from_model(setting.model, aggregator=name)
        step.steps_taken = 1
        runs: dict[str, Callable[[], object]] = {
            "ours": lambda step=step: step(setting.task_losses),
            "libmtl": libmtl_step(setting, mtl.aggregator(name)),
        }
        if name in REPRESENTATION_METHODS:
            runs["representation"] = representation_step(setting, mtl.aggregator(name))
        times = interleaved_seconds(runs, rounds, warmup=3)  # past gradient_mode="auto"'s measuring step
        ratios[name] = median_ratio(times["ours"], times["libmtl"])
        rep = (
            f"{median_ratio(times['ours'], times['representation']):>13.2f}" if "representation" in times else " " * 13
        )
        ratios[f"{name}/rep"] = median_ratio(times["ours"], times["representation"]) if "representation" in times else 0
        print(f"{name:<14}{ratios[name]:>14.2f}{rep}{statistics.median(times['ours']) * 1e3:>10.2f}")
    return ratios


def authors_fmtl_step(setting: Setting, rho: float = 0.05) -> Callable[[], None]:
    """F-MTL as the authors' loop does it, transcribed: per-task gradients at theta by K backwards, then for
    each task its own point (shared parameters and its head moved by rho times its normalized gradients),
    a forward of the trunk and that task's head only, one backward, the parameters put back; the loss parts
    and the flat parts averaged separately (the ``mean`` aggregator) and added."""
    model = setting.model
    shared = list(model.shared_parameters())
    heads = [list(head) for head in model.task_parameters()]

    def task_loss(task: int) -> Tensor:
        output = model.heads[task](model.encoder(setting.x))
        return setting.tasks[task].kind.loss(output, setting.targets[task])

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
            offsets = []
            for part in (loss_parts[task], head_grads[task]):  # shared and head: each its own norm and radius
                norm = torch.sqrt(sum(g.pow(2).sum() for g in part)) + 1e-12
                offsets += [g * (rho / norm) for g in part]
            with torch.no_grad():
                torch._foreach_add_(moved, offsets)
            grads = torch.autograd.grad(task_loss(task), moved)
            with torch.no_grad():
                torch._foreach_sub_(moved, offsets)
            flat_parts.append([a - b for a, b in zip(grads[: len(shared)], loss_parts[task], strict=True)])
            sam_heads.append(grads[len(shared) :])
        for index, param in enumerate(shared):
            loss_mean = sum(part[index] for part in loss_parts) / num_tasks
            param.grad = loss_mean + sum(part[index] for part in flat_parts) / num_tasks
        for task in range(num_tasks):
            for param, grad in zip(heads[task], sam_heads[task], strict=True):
                param.grad = grad

    return run


def fmtl_against_authors(setting: Setting, rounds: int) -> float:
    step = mtl.MTLStep.from_model(setting.model, wrapper="fmtl", wrapper_hparams={"rho_shared": 0.05, "rho_task": 0.05})
    times = interleaved_seconds(
        {"ours": lambda: step(setting.task_losses), "authors": authors_fmtl_step(setting)}, rounds, warmup=3
    )
    ratio = median_ratio(times["ours"], times["authors"])
    print(f"fmtl (mean) / the authors' per-task loop: {ratio:.2f} ({statistics.median(times['ours']) * 1e3:.1f} ms)")
    return ratio


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


def _resident_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_child(setting_index: int, path: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """Peak resident memory above the resting process (model, data and step built) while three steps run,
    sampled every millisecond by a thread (torch releases the GIL in its kernels)."""
    torch.set_num_threads(1)
    setting = settings(256)[setting_index]
    run = _memory_paths(setting)[path]
    resting = _resident_mib()
    peak = [resting]
    running = threading.Event()
    running.set()

    def sample() -> None:
        while running.is_set():
            peak[0] = max(peak[0], _resident_mib())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    for _ in range(3):
        run()
    seconds = (time.perf_counter() - started) / 3
    running.clear()
    sampler.join()
    queue.put((peak[0] - resting, seconds))


def _memory_paths(setting: Setting) -> dict[str, Callable[[], object]]:
    fast = mtl.MTLStep.from_model(setting.model)
    fast.steps_taken = 1
    diagnostics = mtl.MTLStep.from_model(setting.model, diagnostics_every=1)
    upgrad = mtl.MTLStep.from_model(setting.model, aggregator="upgrad")
    fmtl = mtl.MTLStep.from_model(setting.model, wrapper="fmtl")
    return {
        "fmtl": lambda: fmtl(setting.task_losses),
        "fmtl, authors' loop": authors_fmtl_step(setting),
        "plain fwd+bwd": plain_backprop(setting),
        "ew+mean": lambda: fast(setting.task_losses),
        "ew+mean diagnostics": lambda: diagnostics(setting.task_losses),
        "upgrad": lambda: upgrad(setting.task_losses),
        "upgrad, LibMTL loop": libmtl_step(setting, mtl.aggregator("upgrad")),
    }


def peak_memory() -> None:
    """Peak resident memory of three steps above the resting process (MiB), each path in a fresh process."""
    context = multiprocessing.get_context("spawn")
    for index, setting in enumerate(settings(256)):
        print(f"  {setting.name}")
        for path in _memory_paths(setting):
            queue = context.Queue()
            child = context.Process(target=_peak_child, args=(index, path, queue))
            child.start()
            growth, seconds = queue.get()
            child.join()
            print(f"    {path:<24}{growth:>8.1f} MiB above rest{seconds * 1e3:>10.1f} ms/step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--only", choices=["ew", "steps", "torchjd", "memory"], default=None)
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
            worst = max(ratios[m] for m in methods)
            targets.append((f"every aggregator / LibMTL loop (worst), {setting.name}", worst, 1.0))
            for name in REPRESENTATION_METHODS:
                if ratios.get(f"{name}/rep"):
                    targets.append((f"{name} / rep. loop, {setting.name}", ratios[f"{name}/rep"], 1.1))
            targets.append((f"fmtl / authors' loop, {setting.name}", fmtl_against_authors(setting, args.rounds), 1.0))
    if args.only in (None, "torchjd"):
        print("\n== 3. aggregator call / torchjd 0.18's, P = 100k")
        ratios = against_torchjd(args.rounds)
        geometric = math.exp(statistics.mean(math.log(r) for r in ratios.values()))
        targets.append(("torchjd: worst aggregator", max(ratios.values()), 1.0))
        targets.append(("torchjd: geometric mean", geometric, 0.7))
    if args.only in (None, "memory"):
        print("\n== 4. peak memory")
        peak_memory()
    print("\n== targets")
    for name, value, target in targets:
        print(f"{name:<60}{value:>7.2f}  (target <= {target:.2f}) {'ok' if value <= target else 'MISSED'}")


if __name__ == "__main__":
    main()
