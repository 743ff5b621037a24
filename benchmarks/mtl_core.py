"""Step cost of every MTL method, as ratios to the plain EW step measured side by side in one run.

Two settings from the issue: a LeNet-style hard-parameter-sharing model at batch 256 (K=2,
1x36x36 inputs) and an MLP with K=14 binary heads on 103 inputs. For each: step time of every
weighting, aggregator and wrapper divided by EW's; the share of the step spent in aggregation;
batched per-task gradients versus K sequential backward passes. Prints the targets next to the
measured ratios.

    python benchmarks/mtl_core.py [--repeats 7] [--only aggregator|weighting|wrapper]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from workers import mtl
from workers.mtl.task_gradients import batched_task_gradients, sequential_task_gradients


class LeNetHPS(nn.Module):
    """LeNet encoder shared by two 10-way heads (the Multi-MNIST setting)."""

    def __init__(self, num_tasks: int = 2) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 10, 9), nn.MaxPool2d(2), nn.ReLU(), nn.Conv2d(10, 20, 5), nn.MaxPool2d(2), nn.ReLU(),
            nn.Flatten(), nn.Linear(20 * 5 * 5, 50), nn.ReLU(),
        )  # fmt: skip
        self.heads = nn.ModuleList(nn.Linear(50, 10) for _ in range(num_tasks))

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())

    def task_parameters(self) -> list[list[nn.Parameter]]:
        return [list(head.parameters()) for head in self.heads]

    def task_losses(self, x: Tensor, targets: Tensor) -> Tensor:
        features = self.encoder(x)
        return torch.stack(
            [nn.functional.cross_entropy(head(features), targets[:, k]) for k, head in enumerate(self.heads)]
        )


class MLPHPS(nn.Module):
    """Two-layer MLP shared by K binary heads (the Yeast setting: 103 features, 14 labels)."""

    def __init__(self, num_tasks: int = 14, in_features: int = 103, hidden: int = 256) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(num_tasks))

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())

    def task_parameters(self) -> list[list[nn.Parameter]]:
        return [list(head.parameters()) for head in self.heads]

    def task_losses(self, x: Tensor, targets: Tensor) -> Tensor:
        features = self.encoder(x)
        logits = torch.cat([head(features) for head in self.heads], dim=1)
        return nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(dim=0)


@dataclass
class Setting:
    name: str
    model: nn.Module
    x: Tensor
    targets: Tensor


def settings(batch: int) -> list[Setting]:
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    lenet = Setting(
        "lenet K=2 36x36",
        LeNetHPS(),
        torch.rand(batch, 1, 36, 36, generator=generator),
        torch.randint(0, 10, (batch, 2), generator=generator),
    )
    mlp = Setting(
        "mlp K=14 103 in",
        MLPHPS(),
        torch.randn(batch, 103, generator=generator),
        torch.randint(0, 2, (batch, 14), generator=generator).float(),
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


def step_cost(setting: Setting, repeats: int, **methods: str) -> tuple[float, float]:
    """Median step seconds (forward, gradients, aggregation; no optimizer) and aggregation share."""
    step = mtl.MTLStep.from_model(setting.model, seed=0, **methods)
    shares: list[float] = []

    def run() -> None:
        record = step(lambda: setting.model.task_losses(setting.x, setting.targets))
        shares.append(record.seconds_aggregation / record.seconds_total)

    seconds = median_seconds(run, repeats)
    return seconds, statistics.median(shares)


def gradient_paths(setting: Setting, repeats: int) -> tuple[float, float]:
    params = [*setting.model.shared_parameters(), *(p for h in setting.model.task_parameters() for p in h)]

    def batched() -> None:
        batched_task_gradients(setting.model.task_losses(setting.x, setting.targets), params, retain_graph=False)

    def sequential() -> None:
        sequential_task_gradients(setting.model.task_losses(setting.x, setting.targets), params, retain_graph=False)

    return median_seconds(batched, repeats), median_seconds(sequential, repeats)


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
        batched, sequential = gradient_paths(setting, args.repeats)
        summary[f"{setting.name}/batched_over_sequential"] = batched / sequential
        print(f"per-task gradients: batched {batched * 1e3:.2f} ms, sequential {sequential * 1e3:.2f} ms, "
              f"ratio {batched / sequential:.2f}")  # fmt: skip
    print("\n== targets")
    mlp = "mlp K=14 103 in"
    print(f"batched / sequential per-task gradients at K=14: {summary[f'{mlp}/batched_over_sequential']:.2f} "
          "(target <= 0.60)")  # fmt: skip
    samo, fmtl = summary.get(f"{mlp}/wrapper/samo"), summary.get(f"{mlp}/wrapper/fmtl")
    if samo and fmtl:
        print(f"SAMO step / F-MTL step at K=14: {samo / fmtl:.2f} (target <= 0.80)")


if __name__ == "__main__":
    main()
