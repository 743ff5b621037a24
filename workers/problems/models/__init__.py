"""Multi-task architectures by name, each declaring its shared and per-task parameters.

``build_model(name, input_shape, tasks, **options)``:

- ``mlp``, ``lenet``, ``cnn``, ``resnet18``: hard parameter sharing, that encoder shared and a linear head
  per task (options go to the encoder: ``hidden``; ``channels``/``features``/``padding``; ``widths``;
  ``width``/``stem``).
- ``mmoe``: multi-gate mixture of experts for tabular inputs (``num_experts``, ``expert_hidden``,
  ``tower_hidden``).
- ``ple``: progressive layered extraction for tabular inputs (``num_levels``, ``shared_experts``,
  ``task_experts``, ``expert_hidden``, ``tower_hidden``).
- ``mtan``: SegNet-based MTAN for dense tasks (``widths``); ``segnet``: the same SegNet shared by all tasks
  with a conv head each (hard sharing, exposes its representation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from flatmtl.workers.problems.errors import ProblemError
from flatmtl.workers.problems.models.base import MultiTaskNet
from flatmtl.workers.problems.models.encoders import CNNEncoder, LeNetEncoder, MLPEncoder, ResNet18Encoder
from flatmtl.workers.problems.models.hps import HardSharing
from flatmtl.workers.problems.models.mmoe import MMoE
from flatmtl.workers.problems.models.mtan import MTAN
from flatmtl.workers.problems.models.ple import PLE
from flatmtl.workers.problems.options import check_options
from flatmtl.workers.problems.tasks import Task

ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLPEncoder,
    "lenet": LeNetEncoder,
    "cnn": CNNEncoder,
    "resnet18": ResNet18Encoder,
}
MODEL_NAMES = (*ENCODERS, "mmoe", "ple", "mtan", "segnet")


def build_model(
    name: str, input_shape: Sequence[int], tasks: Sequence[Task], *, multi_input: bool = False, **options: Any
) -> MultiTaskNet:
    """The named architecture for inputs of ``input_shape`` (one sample, no batch) and these tasks' outputs."""
    dense = [task.kind.dense for task in tasks]
    out_channels = [task.kind.out_channels for task in tasks]
    if name in ENCODERS:
        if any(dense):
            raise ProblemError(f"model {name!r} predicts one vector per input; dense tasks need 'mtan' or 'segnet'")
        check_options(name, ENCODERS[name], options, skip=("input_shape",))
        encoder = ENCODERS[name](input_shape, **options)
        heads = [nn.Linear(encoder.out_features, out) for out in out_channels]
        return HardSharing(encoder, heads, multi_input=multi_input)
    if multi_input:
        raise ProblemError(f"model {name!r} takes one input; multi-input problems need one of {sorted(ENCODERS)}")
    if name in ("mmoe", "ple"):
        if any(dense):
            raise ProblemError(f"model {name!r} predicts one vector per input; dense tasks need 'mtan' or 'segnet'")
        cls = MMoE if name == "mmoe" else PLE
        check_options(name, cls, options, skip=("input_shape", "out_features"))
        return cls(input_shape, out_channels, **options)
    if name in ("mtan", "segnet"):
        if not all(dense) or len(input_shape) != 3:
            raise ProblemError(f"model {name!r} is for dense prediction on images; these tasks are not all dense")
        check_options(name, MTAN, options, skip=("in_channels", "out_channels", "attention"))
        return MTAN(input_shape[0], out_channels, attention=name == "mtan", **options)
    raise ProblemError(f"unknown model {name!r}; known: {list(MODEL_NAMES)}")


__all__ = ["MODEL_NAMES", "MTAN", "PLE", "HardSharing", "MMoE", "MultiTaskNet", "build_model"]
