"""FlatMTL's MTL core (torch only): loss weightings, gradient aggregators, sharpness-aware wrappers,
the step that composes them, and gradient-conflict diagnostics.

    >>> from workers import mtl
    >>> agg = mtl.aggregator("mgda", normalization="l2")
    >>> update = agg(grads)                 # [K, P] -> [P]
    >>> weights = agg.weights(grads @ grads.T)
"""

from __future__ import annotations

from typing import Any

from flatmtl.workers.mtl import aggregators, weightings, wrappers  # noqa: F401  (registers every method)
from flatmtl.workers.mtl.base import Aggregator, GramAggregator, LossWeighting, Stateful, Wrapper
from flatmtl.workers.mtl.communicator import Communicator, LocalComm
from flatmtl.workers.mtl.errors import MethodError
from flatmtl.workers.mtl.oracle import GradientOracle, StepRecord
from flatmtl.workers.mtl.registry import HParam, MethodSpec, build, methods, spec
from flatmtl.workers.mtl.step import MTLStep, ParameterSplit


def aggregator(name: str, **hparams: Any) -> Aggregator:
    """A gradient aggregator by name, e.g. ``aggregator("cagrad", c=0.4)``."""
    return build("aggregator", name, **hparams)


def loss_weighting(name: str, **hparams: Any) -> LossWeighting:
    """A loss weighting by name, e.g. ``loss_weighting("rlw", distribution="dirichlet")``."""
    return build("weighting", name, **hparams)


def wrapper(name: str, **hparams: Any) -> Wrapper:
    """A step wrapper by name, e.g. ``wrapper("samo", rho=1e-3, alpha=0.5)``."""
    return build("wrapper", name, **hparams)


__all__ = [
    "Aggregator",
    "Communicator",
    "GradientOracle",
    "GramAggregator",
    "HParam",
    "LocalComm",
    "LossWeighting",
    "MTLStep",
    "MethodError",
    "MethodSpec",
    "ParameterSplit",
    "Stateful",
    "StepRecord",
    "Wrapper",
    "aggregator",
    "loss_weighting",
    "methods",
    "spec",
    "wrapper",
]
