"""The generated catalog is current, and validates hyper-parameters exactly as the registry does."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from flatmtl.service.catalog import CATALOG_PATH, Catalog, CatalogError
from flatmtl.service.hparams import HParamError, ValueRule
from flatmtl.workers.catalog_export import render_catalog
from flatmtl.workers.mtl import methods
from flatmtl.workers.mtl.errors import MethodError
from flatmtl.workers.mtl.registry import HParam


def test_committed_catalog_matches_the_registry() -> None:
    assert CATALOG_PATH.read_text() == render_catalog(), "stale catalog; run: python -m flatmtl.workers.catalog_export"


def probes(hp: HParam) -> list[Any]:
    """Values on, inside and outside each declared boundary, plus wrong types."""
    values: list[Any] = [None, "text", True, False, 0, 1, -1, 2.5, math.nan, math.inf, [1]]
    if hp.choices is not None:
        values += list(hp.choices)
    for bound in (hp.low, hp.high):
        if bound is not None:
            values += [bound, bound - 1e-9, bound + 1e-9, bound - 1, bound + 1, float(bound), int(bound)]
    return values


def _registry(hp: HParam, value: Any) -> tuple[str, Any]:
    try:
        return ("ok", hp.validate("m", value))
    except MethodError as error:
        return ("refused", str(error).removeprefix("m."))


def _catalog(catalog: Catalog, kind: str, method: str, name: str, value: Any) -> tuple[str, Any]:
    try:
        return ("ok", catalog.method(kind, method).hparam(name).validate(value))  # type: ignore[arg-type]
    except CatalogError as error:
        return ("refused", error.message)


@pytest.mark.parametrize("method", methods(), ids=lambda m: f"{m.kind}:{m.name}")
def test_catalog_validation_equals_registry_validation(method: Any) -> None:
    """The same values, on and around every declared boundary, through both paths: the same verdict, the same
    coerced value and type, the same message."""
    catalog = Catalog(json.loads(render_catalog()))
    for hp in method.hparams:
        for value in probes(hp):
            expected = _registry(hp, value)
            got = _catalog(catalog, method.kind, method.name, hp.name, value)
            assert got == expected, (method.name, hp.name, value, got, expected)
            if got[0] == "ok":
                assert type(got[1]) is type(expected[1]), (hp.name, value)


@pytest.mark.parametrize("choices", [(0, 1), (0.5, 1.0), ("a", "b")])
def test_a_bool_is_never_one_of_the_choices(choices: tuple[Any, ...]) -> None:
    rule = ValueRule(type(choices[0]).__name__, choices=choices)
    for value in (True, False):
        with pytest.raises(HParamError, match="is not allowed"):
            rule.check(value)
    assert rule.check(choices[1]) == choices[1]
