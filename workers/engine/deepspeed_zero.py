"""DeepSpeed ZeRO (stages 1-3) as the owner of the parameters' and optimizer state's partitions.

The MTL step still computes, reduces and aggregates the per-task gradients itself (``DataParallelComm`` for
stage 1, ``ShardedComm``'s reduce-scatter for stages 2 and 3): DeepSpeed's hooks assume one backward per
step, while the step differentiates the shared parameters once per task and again in SAM's perturbed passes.
DeepSpeed receives only the finished update, through its public ``engine.backward``: a loss whose backward
hands each parameter a given gradient (``_GradientInjection``) and touches no model computation. Its usual
gradient reduction then averages over ranks (one more reduction of every trainable parameter's gradient per
step), so every rank contributes its update scaled to survive that average: the replicated update (heads,
and stage 1's shared update) as it is, this rank's shard of a sharded update times N with zeros elsewhere
(exact for a power-of-two N, within an ulp otherwise). ``safe_set_full_grad`` would skip that reduction, but
stages 1-2 refuse it before a backward.

Stage 3 partitions the parameters themselves, so the step, evaluation and checkpoints run inside
``gathered()`` (DeepSpeed's ``GatheredParameters`` over every trainable parameter: the MTL step's several
backward passes through one graph need the whole trunk for the whole step, as in ``flatmtl.workers.engine.partition``).
DeepSpeed keeps float32 master weights whatever the model's dtype.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from flatmtl.workers.engine.shard import ShardedFlatParams

STAGES = (1, 2, 3)


def import_deepspeed() -> Any:
    """DeepSpeed, on the CPU accelerator where there is no CUDA (it must be chosen before the import)."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    try:
        import deepspeed
    except ImportError as error:
        raise RuntimeError(
            "sharding_backend='deepspeed' needs the deepspeed package: pip install 'flatmtl[deepspeed]'"
        ) from error
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    # DeepSpeed's own collectives still call the old names; the engine's go through flatmtl.workers.engine.collectives.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    return deepspeed


class _ParameterStore(nn.Module):
    """The module DeepSpeed manages: the model's own parameter objects, and no forward (the MTL step runs the
    model itself, so DeepSpeed's stage-3 fetch/release hooks never fire inside its backward passes)."""

    def __init__(self, params: Sequence[nn.Parameter]) -> None:
        super().__init__()
        self.params = nn.ParameterList(params)


class _GradientInjection(torch.autograd.Function):
    """A zero loss whose gradient w.r.t. each of the first n inputs is the matching one of the last n."""

    @staticmethod
    def forward(ctx: Any, *tensors: Tensor) -> Tensor:
        half = len(tensors) // 2
        ctx.grads = tensors[half:]
        return tensors[0].new_zeros(())

    @staticmethod
    def backward(ctx: Any, output: Tensor) -> tuple[Tensor | None, ...]:
        """``output`` carries whatever scale DeepSpeed puts on the loss (1 in fp32 without accumulation)."""
        return (*(grad * output for grad in ctx.grads), *(None for _ in ctx.grads))


class DeepSpeedZero:
    """DeepSpeed's ZeRO engine over ``shared`` and ``replicated`` parameters, stepped with the MTL step's update.

    ``shard`` is the sharded step's view of the shared parameters (stages 2 and 3), whose ``grad_shard`` holds
    this rank's slots of the aggregated update; without it (stage 1) the update is every parameter's ``.grad``.
    Use: ``with zero.gathered(): step(closure); zero.hand_over()`` then ``zero.step()``.
    """

    def __init__(
        self,
        stage: int,
        shared: Sequence[nn.Parameter],
        replicated: Sequence[nn.Parameter],
        factory: type[torch.optim.Optimizer],
        *,
        shard: ShardedFlatParams | None = None,
        world_size: int,
        **options: Any,
    ) -> None:
        if stage not in STAGES:
            raise ValueError(f"stage={stage} is not allowed; allowed: {', '.join(map(str, STAGES))}")
        if (shard is None) != (stage == 1):
            raise ValueError(f"stage {stage} needs {'no shard view' if stage == 1 else 'the sharded step view'}")
        self.deepspeed = import_deepspeed()
        self.stage = stage
        self.shard = shard
        self.world_size = world_size
        self.shared = list(shared)
        self.params = [*self.shared, *replicated]
        self.optimizer = factory(self.params, **options)
        """The torch optimizer DeepSpeed steps on its float32 partitions: the scheduler and checkpoints use it."""
        config = {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            # every parameter partitioned at stage 3 (DeepSpeed keeps small ones whole by default)
            "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0},
            "zero_allow_untested_optimizer": True,
            "gradient_clipping": 0.0,
            "steps_per_print": 2**62,
            "wall_clock_breakdown": False,
        }
        device = parameters_device(self.params)
        # DeepSpeed moves the module to ``cuda:LOCAL_RANK`` unless told a device; under Ray Train a rank's GPU
        # (``ray.train.torch.get_device()``) need not be that one, and buffers and data would stay behind.
        args = SimpleNamespace(device_rank=device.index) if device.type == "cuda" else None
        self.engine, _, _, _ = self.deepspeed.initialize(
            args=args,
            model=_ParameterStore(self.params),
            optimizer=self.optimizer,
            config=config,
            dist_init_required=False,
        )
        if torch.device(self.engine.device) != device:
            raise RuntimeError(f"DeepSpeed placed the engine on {self.engine.device}, the parameters are on {device}")
        self._gathered = stage != 3

    @contextmanager
    def gathered(self) -> Iterator[None]:
        """Every parameter whole inside the block: a stage-3 all-gather (nested blocks reuse it), else nothing."""
        if self._gathered:
            yield
            return
        with self.deepspeed.zero.GatheredParameters(self.params):
            self._gathered = True
            try:
                yield
            finally:
                self._gathered = False

    def _updates(self) -> list[Tensor]:
        """Each parameter's contribution to DeepSpeed's rank-mean (the parameters are whole: see ``hand_over``)."""
        replicated = [_grad_or_zeros(p) for p in self.params[len(self.shared) :]]
        if self.shard is None:
            return [*(_grad_or_zeros(p) for p in self.shared), *replicated]
        if self.shard.grad_shard is None:
            raise RuntimeError("no shard update: run the step (which writes it) before hand_over()")
        layout = self.shard.layout
        full = self.shard.grad_shard.new_zeros(layout.numel)
        full[layout.start : layout.stop] = self.shard.grad_shard[: layout.local_numel] * self.world_size
        return [*self.shard.views(full), *replicated]

    def hand_over(self) -> None:
        """Give the step's update to DeepSpeed (inside ``gathered()`` at stage 3): its reduction averages it."""
        updates = self._updates()
        for param in self.params:
            param.grad = None
        self.engine.backward(_GradientInjection.apply(*self.params, *updates))

    def step(self) -> None:
        self.engine.step()

    def zero_grad(self) -> None:
        self.engine.zero_grad()
        if self.shard is not None:
            self.shard.grad_shard = None

    def state_dict(self) -> dict[str, Any]:
        """This rank's optimizer state over its float32 partitions (the master weights are the model's values)."""
        with self._optimizer_groups():
            return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with self._optimizer_groups():
            self.optimizer.load_state_dict(state)

    @contextmanager
    def _optimizer_groups(self) -> Iterator[None]:
        """Stage 3 lends its partitions to the torch optimizer only while stepping it; lend them here too."""
        if self.stage != 3:
            yield
            return
        zero = self.engine.optimizer
        zero._set_fp32_optimizer_param_groups()
        try:
            yield
        finally:
            zero._clear_fp32_optimizer_param_groups()


def parameters_device(params: Sequence[Tensor]) -> torch.device:
    """The one device every parameter lives on (DeepSpeed keeps a whole engine on one device)."""
    devices = {param.device for param in params}
    if len(devices) != 1:
        raise ValueError(f"the parameters live on {sorted(map(str, devices))}; allowed: one device")
    return devices.pop()


def _grad_or_zeros(param: Tensor) -> Tensor:
    return torch.zeros_like(param) if param.grad is None else param.grad.detach()
