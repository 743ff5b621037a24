"""What a training run can fail with, as types the CLI and the control plane's worker can act on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a config: the field path as the user wrote it, the value and what is allowed."""

    field: str
    value: object
    message: str
    allowed: str = ""

    def __str__(self) -> str:
        text = f"{self.field or '(config)'}: {self.message}"
        if self.value is not None and repr(self.value) not in text:
            text += f" (got {self.value!r})"
        if self.allowed and self.allowed not in text:
            text += f"; allowed: {self.allowed}"
        return text


class ConfigError(ValueError):
    """A config that cannot run: unreadable, invalid against TrainSpec, or naming options the problem, model or
    engine refuses. Carries every problem found so the user fixes them in one go."""

    def __init__(self, problems: Sequence[ConfigProblem], source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__(prefix + "; ".join(str(p) for p in self.problems))


class TrainingFailedError(RuntimeError):
    """The run stopped because a step could not be taken; ``summary.json`` says FAILED with the same details."""

    def __init__(self, message: str, *, step: int, epoch: int) -> None:
        super().__init__(message)
        self.message = message
        self.step = step
        self.epoch = epoch

    def details(self) -> dict[str, object]:
        return {"type": type(self).__name__, "message": self.message, "step": self.step, "epoch": self.epoch}


class NonFiniteLossError(TrainingFailedError):
    """A task's loss was NaN or infinite (on any rank) at ``step``; ``tasks`` names every such task."""

    def __init__(self, *, step: int, epoch: int, tasks: Sequence[str], values: Sequence[float]) -> None:
        self.tasks = list(tasks)
        self.values = list(values)
        shown = ", ".join(f"{task}={value}" for task, value in zip(self.tasks, self.values, strict=True))
        super().__init__(f"non-finite loss at step {step} (epoch {epoch}) in task(s) {shown}", step=step, epoch=epoch)

    @property
    def task(self) -> str:
        """The first task whose loss was not finite."""
        return self.tasks[0]

    def details(self) -> dict[str, object]:
        return {**super().details(), "task": self.task, "tasks": self.tasks, "values": [str(v) for v in self.values]}
