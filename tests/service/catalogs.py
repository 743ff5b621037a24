"""A small hand-written method catalog, so spec tests do not depend on which methods exist today."""

from __future__ import annotations

from typing import Any

from flatmtl.service.catalog import Catalog


def hparam(
    name: str,
    type_: str,
    default: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    choices: list[Any] | None = None,
    allowed: str,
) -> dict[str, Any]:
    return {
        "name": name,
        "type": type_,
        "default": default,
        "allowed": allowed,
        "low": low,
        "high": high,
        "low_open": low_open,
        "high_open": high_open,
        "choices": choices,
        "doc": name,
    }


def method(kind: str, name: str, *hparams: dict[str, Any], shardable: bool = True) -> dict[str, Any]:
    return {
        "name": name,
        "kind": kind,
        "description": f"{name} for tests",
        "paper": "-",
        "scale": "-",
        "shardable": shardable,
        "hparams": list(hparams),
    }


RHO = hparam("rho", "float", 0.05, low=0.0, allowed="float in [0, inf)")
ALPHA = hparam("alpha", "float", 0.5, low=0.0, high=1.0, allowed="float in [0, 1]")

DOCUMENT: dict[str, Any] = {
    "version": 1,
    "methods": [
        method("weighting", "ew"),
        method(
            "weighting", "dwa", hparam("temperature", "float", 2.0, low=0.0, low_open=True, allowed="float in (0, inf)")
        ),
        method("aggregator", "mean"),
        method(
            "aggregator",
            "mgda",
            hparam(
                "normalization", "str", "none", choices=["none", "l2", "loss"], allowed="one of 'none', 'l2', 'loss'"
            ),
        ),
        method(
            "aggregator",
            "graddrop",
            hparam("leak", "float", 0.0, low=0.0, high=1.0, allowed="float in [0, 1]"),
            shardable=False,
        ),
        method("aggregator", "nash", hparam("iterations", "int", 20, low=1, allowed="int in [1, inf)")),
        method("wrapper", "none"),
        method("wrapper", "sam", RHO, hparam("adaptive", "bool", False, allowed="true or false")),
        method("wrapper", "fmtl", RHO, ALPHA),
        method("wrapper", "samo", RHO, ALPHA),
    ],
}
CATALOG = Catalog(DOCUMENT)
CONTEXT = {"catalog": CATALOG}
