"""Step cost of every MTL method, as ratios to the plain EW step measured side by side in one run.

Two settings: a LeNet-style hard-parameter-sharing model at batch 256 (K=2,
1x36x36 inputs) and an MLP with K=14 binary heads on 103 inputs. For each: step time of every
weighting, aggregator and wrapper divided by EW's; the share of the step spent in aggregation; the
per-task gradients along each path against K sequential backward passes (one vmapped backward through
the whole graph; the heads cut from the trunk with one vmapped trunk backward; the heads cut and, where
the trunk is linear layers and activations, batched matrix products instead of the vmapped trunk
backward, else the vmapped one: the default for models that declare their heads); SAMO's step against
F-MTL's timed in turn. Prints the targets next to the measured ratios.

    python benchmarks/mtl_core.py [--repeats 7] [--only aggregator|weighting|wrapper]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from flatmtl.workers import mtl
from flatmtl.workers.problems.models import build_model
from flatmtl.workers.problems.tasks import Binary, Classification, Task, stack_losses


@dataclass
class Setting:
    """A product model with random inputs of the right shape (step cost does not depend on the data)."""

    name: str
    model: nn.Module
    tasks: list[Task]
    x: Tensor
    targets: list[Tensor]

    def task_losses(self) -> Tensor:
        return stack_losses(self.tasks, list(self.model(self.x)), self.targets)


def settings(batch: int) -> list[Setting]:
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    digits = [Task(f"digit_{k}", Classification(10)) for k in range(2)]
    labels = [Task(f"label_{k}", Binary()) for k in range(14)]
    lenet = Setting(
        "lenet K=2 36x36",
        build_model("lenet", (1, 36, 36), digits),
        digits,
        torch.rand(batch, 1, 36, 36, generator=generator),
        [torch.randint(0, 10, (batch,), generator=generator) for _ in digits],
    )
    mlp = Setting(
        "mlp K=14 103 in",
        build_model("mlp", (103,), labels),
        labels,
        torch.randn(batch, 103, generator=generator),
        [torch.randint(0, 2, (batch,), generator=generator).float() for _ in labels],
    )
    return [lenet, mlp]


def median_seconds(run: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def step_cost(setting: Setting, repeats: int, batched_probes: bool = True, **methods: Any) -> tuple[float, float]:
    """Median step seconds (forward, gradients, aggregation; no optimizer) and aggregation share."""
    step = mtl.MTLStep.from_model(setting.model, seed=0, **methods)
    if not batched_probes:
        step.probes = None
    shares: list[float] = []

    def run() -> None:
        record = step(lambda: setting.task_losses())
        shares.append(record.seconds_aggregation / record.seconds_total)

    seconds = median_seconds(run, repeats)
    return seconds, statistics.median(shares)


def step_flops(setting: Setting, **methods: Any) -> int:
    """Floating-point operations of one step, counted by torch's FLOP counter (matrix products and
    convolutions, the work no implementation can skip)."""
    step = mtl.MTLStep.from_model(setting.model, seed=0, **methods)
    step(setting.task_losses)
    with FlopCounterMode(display=False) as counter:
        step(setting.task_losses)
    return counter.get_total_flops()


def gradient_paths(setting: Setting, repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds of the oracle's per-task gradients (forward included) along each path per repeat, the paths
    timed in turn within each repeat so that a change in machine load hits them alike."""
    paths = {  # gradient mode, heads cut from the trunk, linear-trunk products where the trunk allows
        "sequential": ("sequential", False, False),
        "vmapped whole graph": ("batched", False, False),
        "vmapped, heads cut": ("batched", True, False),
        "heads cut, linear trunk": ("batched", True, True),
    }
    runs: dict[str, Callable[[], object]] = {}
    for name, (mode, cut, linear) in paths.items():
        split = mtl.ParameterSplit.from_model(setting.model)
        if not cut:
            split.task_heads = None
        step = mtl.MTLStep(split, gradient_mode=mode)
        step.gradient_engine.linear_trunk = linear

        def run(step: mtl.MTLStep = step) -> None:
            oracle = step.oracle(setting.task_losses)
            oracle.task_gradients(oracle.losses())

        runs[name] = run
    return interleaved_seconds(runs, repeats, warmup)


def interleaved_seconds(
    runs: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 2,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds of each run per repeat, the runs timed in turn within each repeat so that a change in machine
    load hits them alike (repeat r of every run is comparable). The order reverses every other repeat: the run
    that goes first meets caches the others left, which would favour whichever the order puts second.
    ``clock=time.thread_time`` times the CPU work of a one-thread run on the CPU alone: wall time on a shared
    machine also counts the slices other processes took, which a run of a single step of tens of milliseconds
    meets at random."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(warmup + repeats):
        order = list(runs.items()) if repeat % 2 == 0 else list(reversed(runs.items()))
        for name, run in order:
            started = clock()
            run()
            if repeat >= warmup:
                times[name].append(clock() - started)
    return times


def paired_wrapper_ratios(setting: Setting, repeats: int) -> dict[str, float]:
    """SAMO's step over F-MTL's, both timed in turn within each repeat: the median of the per-repeat ratios;
    also SAMO's K Gaussian directions over the shared parameters alone ("draws", arithmetic no FLOP counter
    sees), over F-MTL's step."""
    variants = {
        "fmtl": {"wrapper": "fmtl"},
        "samo": {"wrapper": "samo"},
        "samo_shared_directions": {"wrapper": "samo", "wrapper_hparams": {"shared_directions": True}},
    }
    runs: dict[str, Callable[[], object]] = {}
    for name, methods in variants.items():
        step = mtl.MTLStep.from_model(setting.model, seed=0, **methods)
        runs[name] = functools.partial(step, setting.task_losses)
    numel = sum(p.numel() for p in setting.model.shared_parameters())
    generator = torch.Generator().manual_seed(0)
    runs["draws"] = lambda: torch.randn(len(setting.tasks), numel, generator=generator)
    times = interleaved_seconds(runs, repeats)
    return {name: median_ratio(seconds, times["fmtl"]) for name, seconds in times.items() if name != "fmtl"}


def median_ratio(seconds: list[float], reference: list[float]) -> float:
    """Median over repeats of one run's time over the reference run's time in the same repeat."""
    return statistics.median(t / r for t, r in zip(seconds, reference, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--only", choices=["weighting", "aggregator", "wrapper"], default=None)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, median of {args.repeats}")
    summary: dict[str, float] = {}
    for setting in settings(args.batch):
        print(f"\n== {setting.name}")
        base, _ = step_cost(setting, args.repeats)
        print(f"{'method':<28}{'ms/step':>10}{'x ew':>8}{'agg share':>11}")
        print(f"{'ew + mean + none':<28}{base * 1e3:>10.2f}{1.0:>8.2f}")
        kinds = [args.only] if args.only else ["aggregator", "weighting", "wrapper"]
        for kind in kinds:
            for method in mtl.methods(kind):  # type: ignore[arg-type]
                seconds, share = step_cost(setting, args.repeats, **{kind: method.name})
                summary[f"{setting.name}/{kind}/{method.name}"] = seconds
                print(f"{kind[:3] + ' ' + method.name:<28}{seconds * 1e3:>10.2f}{seconds / base:>8.2f}{share:>11.1%}")
        if not args.only or args.only == "wrapper":
            shared_z, _ = step_cost(setting, args.repeats, wrapper="samo", wrapper_hparams={"shared_directions": True})
            summary[f"{setting.name}/wrapper/samo_shared_directions"] = shared_z
            print(f"{'wra samo shared_directions':<28}{shared_z * 1e3:>10.2f}{shared_z / base:>8.2f}")
            one_by_one, _ = step_cost(setting, args.repeats, batched_probes=False, wrapper="samo")
            print(f"{'wra samo, a forward/probe':<28}{one_by_one * 1e3:>10.2f}{one_by_one / base:>8.2f}")
            for variant, ratio in paired_wrapper_ratios(setting, args.repeats).items():
                summary[f"{setting.name}/paired/{variant}_over_fmtl"] = ratio
            flops = {name: step_flops(setting, wrapper=name) for name in ("none", "fmtl", "samo")}
            summary[f"{setting.name}/flops_samo_over_fmtl"] = flops["samo"] / flops["fmtl"]
            print("FLOPs per step / EW's: " + ", ".join(
                f"{name} {count / flops['none']:.2f}" for name, count in flops.items()
            ))  # fmt: skip
        paths = gradient_paths(setting, args.repeats)
        ratios = {name: median_ratio(seconds, paths["sequential"]) for name, seconds in paths.items()}
        print("per-task gradients (forward included; median ms, median ratio to sequential in the same repeat): "
              + ", ".join(f"{name} {statistics.median(paths[name]) * 1e3:.2f} ms ({ratio:.2f}x)"
                          for name, ratio in ratios.items()))  # fmt: skip
        summary[f"{setting.name}/batched_over_sequential"] = ratios["heads cut, linear trunk"]
    print("\n== targets")
    mlp = "mlp K=14 103 in"
    print(f"batched per-task gradients (heads cut, linear trunk) / sequential at K=14: "
          f"{summary[f'{mlp}/batched_over_sequential']:.2f} (target <= 0.60)")  # fmt: skip
    for variant in ("samo", "samo_shared_directions"):
        ratio = summary.get(f"{mlp}/paired/{variant}_over_fmtl")
        if ratio:
            print(f"{variant} step / F-MTL step at K=14 (timed in turn, median ratio): {ratio:.2f} (target <= 0.80)")
    floor = summary.get(f"{mlp}/flops_samo_over_fmtl")
    draws = summary.get(f"{mlp}/paired/draws_over_fmtl")
    if floor and draws:
        print(f"samo FLOPs / F-MTL FLOPs at K=14: {floor:.2f} (the floor: SAMO's 2K forwards and extra backward "
              "outweigh the batched per-task backward they replace)")  # fmt: skip
        print(f"+ SAMO's K Gaussian directions alone / F-MTL step: {draws:.2f} -> floor ~{floor + draws:.2f}")


if __name__ == "__main__":
    main()
