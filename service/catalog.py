"""The method catalog (generated from the registry by ``python -m flatmtl.workers.catalog_export``), without torch.

Job specs' hyper-parameters are validated with the rule the registry uses (:mod:`flatmtl.service.hparams`), so a
spec the API accepts is one the workers can build.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from flatmtl.service.hparams import HParamError, ValueRule

Kind = Literal["weighting", "aggregator", "wrapper"]
KINDS: tuple[Kind, ...] = ("weighting", "aggregator", "wrapper")
CATALOG_PATH = Path(__file__).resolve().parent / "method_catalog.json"


class CatalogError(ValueError):
    """A method name or hyper-parameter the catalog does not allow; ``key`` names the hyper-parameter."""

    def __init__(self, message: str, *, key: str | None = None, value: Any = None, allowed: str = "") -> None:
        super().__init__(message)
        self.message, self.key, self.value, self.allowed = message, key, value, allowed


@dataclass(frozen=True)
class HParamInfo:
    name: str
    type: str
    default: Any
    allowed: str
    low: float | None
    high: float | None
    low_open: bool
    high_open: bool
    choices: tuple[Any, ...] | None

    @property
    def rule(self) -> ValueRule:
        return ValueRule(self.type, self.low, self.high, self.low_open, self.high_open, self.choices)

    def validate(self, value: Any) -> Any:
        """The value coerced to the declared type; CatalogError if it is not allowed."""
        try:
            return self.rule.check(value)
        except HParamError as refused:
            raise CatalogError(
                f"{self.name}={value!r} {refused.reason}; allowed: {self.allowed}",
                key=self.name,
                value=value,
                allowed=self.allowed,
            ) from None


@dataclass(frozen=True)
class MethodInfo:
    name: str
    kind: Kind
    description: str
    paper: str
    scale: str
    shardable: bool
    hparams: tuple[HParamInfo, ...]
    raw: dict[str, Any]

    def hparam(self, name: str) -> HParamInfo:
        for hp in self.hparams:
            if hp.name == name:
                return hp
        allowed = ", ".join(hp.name for hp in self.hparams) or "none"
        raise CatalogError(
            f"{self.kind} {self.name!r} has no hyper-parameter {name!r}; allowed: {allowed}",
            key=name,
            value=name,
            allowed=allowed,
        )

    def resolve(self, given: dict[str, Any]) -> dict[str, Any]:
        """Only the given hyper-parameters, each validated (defaults stay implicit so specs stay short)."""
        return {name: self.hparam(name).validate(value) for name, value in given.items()}


class Catalog:
    """Methods by kind and name, loaded from the generated JSON."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self._methods: dict[Kind, dict[str, MethodInfo]] = {kind: {} for kind in KINDS}
        for entry in document["methods"]:
            hparams = tuple(
                HParamInfo(
                    name=hp["name"],
                    type=hp["type"],
                    default=hp["default"],
                    allowed=hp["allowed"],
                    low=hp["low"],
                    high=hp["high"],
                    low_open=hp["low_open"],
                    high_open=hp["high_open"],
                    choices=tuple(hp["choices"]) if hp["choices"] is not None else None,
                )
                for hp in entry["hparams"]
            )
            info = MethodInfo(
                entry["name"],
                entry["kind"],
                entry["description"],
                entry["paper"],
                entry["scale"],
                entry["shardable"],
                hparams,
                entry,
            )
            self._methods[info.kind][info.name] = info

    def names(self, kind: Kind) -> list[str]:
        return sorted(self._methods[kind])

    def method(self, kind: Kind, name: str) -> MethodInfo:
        try:
            return self._methods[kind][name]
        except KeyError:
            allowed = ", ".join(self.names(kind))
            raise CatalogError(f"unknown {kind} {name!r}; allowed: {allowed}", value=name, allowed=allowed) from None

    def methods(self, kind: Kind | None = None) -> list[MethodInfo]:
        kinds = KINDS if kind is None else (kind,)
        return [info for k in kinds for info in self._methods[k].values()]


@cache
def load_catalog(path: Path = CATALOG_PATH) -> Catalog:
    """The committed catalog (cached: it only changes when the code does)."""
    return Catalog(json.loads(path.read_text()))
