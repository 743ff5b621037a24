"""The optimizer and learning-rate schedule a TrainSpec names.

The schedule is stepped once per optimizer step with the position in (fractional) epochs, so warm-up
is smooth within an epoch and resume restores it from the scheduler's step counter alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from flatmtl.service.specs.train import OptimizerConfig, SchedulerConfig

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}


def optimizer_options(config: OptimizerConfig) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The torch optimizer class and its keyword options (the sharded optimizer takes the same pair)."""
    options: dict[str, Any] = {"lr": config.lr, "weight_decay": config.weight_decay}
    if config.name == "sgd":
        options.update(momentum=config.momentum, nesterov=config.nesterov)
    else:
        options.update(betas=tuple(config.betas))
    return OPTIMIZERS[config.name], options


def build_optimizer(config: OptimizerConfig, params: Iterable[Tensor]) -> torch.optim.Optimizer:
    factory, options = optimizer_options(config)
    return factory(list(params), **options)


def lr_factor(config: SchedulerConfig, *, base_lr: float, epochs: int, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of the base learning rate after ``step`` optimizer steps.

    Warm-up rises linearly to 1 over ``warmup_epochs``; then ``cosine`` decays to ``min_lr`` at the last
    epoch, ``step`` multiplies by ``gamma`` every ``step_size`` epochs, ``constant`` stays at 1.
    """
    warmup_steps = config.warmup_epochs * steps_per_epoch
    total_steps = epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        after = step - warmup_steps
        if config.name == "cosine":
            span = max(total_steps - warmup_steps, 1)
            progress = min(after / span, 1.0)
            target = config.min_lr / base_lr
            return target + (1 - target) * 0.5 * (1 + math.cos(math.pi * progress))
        if config.name == "step":
            return config.gamma ** (after // (config.step_size * steps_per_epoch))
        return 1.0

    return factor


def build_scheduler(
    config: SchedulerConfig, optimizer: torch.optim.Optimizer, *, base_lr: float, epochs: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(config, base_lr=base_lr, epochs=epochs, steps_per_epoch=steps_per_epoch)
    )
