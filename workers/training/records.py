"""What is logged per step and per epoch, computed from the MTL step's ``StepRecord``.

Pairwise diagnostics come from the global K x K Gram matrix the step already holds (no extra backward);
wrappers that never aggregate per-task gradients leave it empty and their lines carry no diagnostics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from flatmtl.workers.mtl import diagnostics
from flatmtl.workers.mtl.oracle import StepRecord

DIAGNOSTICS = ("conflict_ratio", "cosine_min", "cosine_mean", "magnitude_similarity_mean")
STEP_MEANS = ("sam_share", "aggregation_share", "communication_bytes")
"""Per-step quantities an epoch reports as their mean over the steps that measured them."""


def step_metrics(
    record: StepRecord, tasks: Sequence[str], *, samples: int, seconds: float, communication_bytes: int = 0
) -> dict[str, float]:
    """Per-task losses, throughput, time shares, bytes sent and gradient geometry of one step.

    ``samples`` is the global batch (all ranks); ``seconds`` the step's wall time including the optimizer;
    ``communication_bytes`` what this rank sent in the step's collectives (ring cost; 0 on one process).
    SAM and aggregation shares are fractions of the method's own time (``record.seconds_total``).
    """
    assert record.losses is not None
    losses = record.host_loss_values if record.host_loss_values is not None else record.losses.double().tolist()
    metrics: dict[str, float] = {f"loss/{task}": loss for task, loss in zip(tasks, losses, strict=True)}
    metrics["loss"] = sum(losses) / len(losses)
    metrics["samples_per_s"] = samples / seconds if seconds > 0 else 0.0
    metrics["step_seconds"] = seconds
    total = record.seconds_total
    if record.timed:  # CUDA steps outside diagnostics are not timed: their shares would be the launch times'
        metrics["sam_share"] = record.seconds_perturbed / total if total > 0 else 0.0
        metrics["aggregation_share"] = record.seconds_aggregation / total if total > 0 else 0.0
    metrics["communication_bytes"] = communication_bytes
    metrics["forward_passes"] = record.forward_passes
    metrics["backward_passes"] = record.backward_passes
    metrics.update(record.extras)  # e.g. which per-task gradient path gradient_mode="auto" measured and chose
    if record.gram is not None:
        summary = diagnostics.summarize(record.host_gram if record.host_gram is not None else record.gram.cpu())
        metrics.update({name: getattr(summary, name) for name in DIAGNOSTICS})
        metrics.update({f"grad_norm/{task}": norm for task, norm in zip(tasks, summary.norms, strict=True)})
    return metrics


@dataclass
class EpochAccumulator:
    """Running sums over an epoch's steps; saved in checkpoints so a resumed epoch reports the same means."""

    steps: int = 0
    samples: int = 0
    seconds: float = 0.0
    loss_sums: list[float] = field(default_factory=list)
    diagnostic_steps: int = 0
    diagnostic_sums: dict[str, float] = field(default_factory=dict)
    share_sums: dict[str, float] = field(default_factory=dict)
    share_steps: dict[str, int] = field(default_factory=dict)
    """Steps that reported each share (timed steps only, for the time shares)."""

    def add(self, metrics: dict[str, float], tasks: Sequence[str], samples: int) -> None:
        losses = [metrics[f"loss/{task}"] for task in tasks]
        self.loss_sums = [a + b for a, b in zip(self.loss_sums or [0.0] * len(tasks), losses, strict=True)]
        self.steps += 1
        self.samples += samples
        self.seconds += metrics["step_seconds"]
        for name in STEP_MEANS:
            if name in metrics:
                self.share_sums[name] = self.share_sums.get(name, 0.0) + metrics[name]
                self.share_steps[name] = self.share_steps.get(name, 0) + 1
        if "conflict_ratio" in metrics:
            self.diagnostic_steps += 1
            for name in DIAGNOSTICS:
                self.diagnostic_sums[name] = self.diagnostic_sums.get(name, 0.0) + metrics[name]

    def means(self, tasks: Sequence[str]) -> dict[str, float]:
        """Epoch means under ``train/``; empty when no step ran."""
        if not self.steps:
            return {}
        out = {f"train/loss/{task}": total / self.steps for task, total in zip(tasks, self.loss_sums, strict=True)}
        out["train/loss"] = sum(self.loss_sums) / len(self.loss_sums) / self.steps
        out["train/samples_per_s"] = self.samples / self.seconds if self.seconds > 0 else 0.0
        out.update(
            {f"train/{name}": total / self.share_steps.get(name, self.steps) for name, total in self.share_sums.items()}
        )
        if self.diagnostic_steps:
            out.update({f"train/{name}": total / self.diagnostic_steps for name, total in self.diagnostic_sums.items()})
        return out

    def state_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, object]) -> EpochAccumulator:
        return cls(**state)  # type: ignore[arg-type]
