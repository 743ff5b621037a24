"""Methods by name, with typed and range-checked hyper-parameters.

Every weighting, aggregator and wrapper registers itself here so that configs, the CLI and the API
choose methods by name and get the same validation everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from flatmtl.service.hparams import HParamError, ValueRule
from flatmtl.workers.mtl.errors import MethodError

Kind = Literal["weighting", "aggregator", "wrapper"]
KINDS: tuple[Kind, ...] = ("weighting", "aggregator", "wrapper")


@dataclass(frozen=True)
class HParam:
    """One hyper-parameter: its type, default and allowed values (a range or a set of choices)."""

    name: str
    type: type
    default: Any
    doc: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] | None = None

    @property
    def rule(self) -> ValueRule:
        return ValueRule(self.type.__name__, self.low, self.high, self.low_open, self.high_open, self.choices)

    def allowed(self) -> str:
        """Human-readable allowed values, used in error messages and `flatmtl methods`."""
        return self.rule.allowed()

    def validate(self, method: str, value: Any) -> Any:
        """Coerce ``value`` to the declared type and check it lies in the allowed set."""
        try:
            return self.rule.check(value)
        except HParamError as refused:
            raise MethodError(f"{method}.{self.name}={value!r} {refused.reason}; allowed: {self.allowed()}") from None

    def describe(self) -> dict[str, Any]:
        """JSON-friendly schema of this hyper-parameter (for the API's method listing)."""
        return {
            "name": self.name,
            "type": self.type.__name__,
            "default": self.default,
            "allowed": self.allowed(),
            "low": self.low,
            "high": self.high,
            "low_open": self.low_open,
            "high_open": self.high_open,
            "choices": list(self.choices) if self.choices is not None else None,
            "doc": self.doc,
        }


@dataclass(frozen=True)
class MethodSpec:
    """What the registry knows of a method: how to build it and how to describe it."""

    name: str
    kind: Kind
    factory: Callable[..., Any]
    description: str
    paper: str
    scale: str
    hparams: tuple[HParam, ...] = field(default_factory=tuple)
    shardable: bool = True

    def hparam(self, name: str) -> HParam:
        for hp in self.hparams:
            if hp.name == name:
                return hp
        allowed = ", ".join(hp.name for hp in self.hparams) or "none"
        raise MethodError(f"{self.kind} {self.name!r} has no hyper-parameter {name!r}; allowed: {allowed}")

    def resolve(self, **given: Any) -> dict[str, Any]:
        """Defaults overridden by ``given``, every value validated."""
        for name in given:
            self.hparam(name)
        return {hp.name: hp.validate(self.name, given.get(hp.name, hp.default)) for hp in self.hparams}

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "paper": self.paper,
            "scale": self.scale,
            "shardable": self.shardable,
            "hparams": [hp.describe() for hp in self.hparams],
        }


_REGISTRY: dict[Kind, dict[str, MethodSpec]] = {kind: {} for kind in KINDS}


def register(
    kind: Kind,
    name: str,
    *,
    description: str,
    paper: str,
    scale: str,
    hparams: tuple[HParam, ...] = (),
    shardable: bool = True,
) -> Callable[[type], type]:
    """Class decorator adding a method to the registry under ``kind``/``name``."""

    def decorate(cls: type) -> type:
        if name in _REGISTRY[kind]:
            raise RuntimeError(f"{kind} {name!r} registered twice")
        _REGISTRY[kind][name] = MethodSpec(name, kind, cls, description, paper, scale, tuple(hparams), shardable)
        cls.method_name = name
        return cls

    return decorate


def spec(kind: Kind, name: str) -> MethodSpec:
    """The registered spec, or a MethodError listing what exists."""
    if kind not in _REGISTRY:
        raise MethodError(f"unknown method kind {kind!r}; allowed: {', '.join(KINDS)}")
    try:
        return _REGISTRY[kind][name]
    except KeyError:
        allowed = ", ".join(sorted(_REGISTRY[kind]))
        raise MethodError(f"unknown {kind} {name!r}; allowed: {allowed}") from None


def build(kind: Kind, name: str, **hparams: Any) -> Any:
    """Instantiate a registered method with validated hyper-parameters."""
    method = spec(kind, name)
    return method.factory(**method.resolve(**hparams))


def methods(kind: Kind | None = None) -> list[MethodSpec]:
    """All registered methods (of one kind, or all kinds), in registration order."""
    kinds = KINDS if kind is None else (kind,)
    return [method for k in kinds for method in _REGISTRY[k].values()]
