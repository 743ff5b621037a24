"""Flattens pydantic validation errors into (field path, value, message, allowed) records.

The API answers 422 with these and the CLI prints them, so both name the same path the user wrote:
``spec.method.wrapper.hparams.rho``, not pydantic's internal location.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

SPEC_KINDS = ("train", "sweep")


@dataclass(frozen=True)
class FieldProblem:
    field: str
    value: Any
    message: str
    allowed: str

    def __str__(self) -> str:
        return f"{self.field or '(body)'}: {self.message}"


def field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """``("spec", "sweep", "space", "a.b")`` -> ``spec.space["a.b"]`` (union tags dropped, dotted keys quoted)."""
    parts: list[str] = []
    previous: Any = None
    for item in loc:
        if previous == "spec" and item in SPEC_KINDS:
            previous = item
            continue
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif isinstance(item, str) and item and "." not in item and item.isprintable():
            parts.append(("." if parts else "") + item)
        else:
            parts.append(f"[{item!r}]")
        previous = item
    return "".join(parts)


def json_safe(value: Any) -> Any:
    """Values echoed back to clients: JSON types only, non-finite floats as strings, long input cut."""
    if isinstance(value, str):
        shown = value if len(value) <= 200 else value[:200] + "..."
        return shown.encode("utf-8", "backslashreplace").decode("utf-8")  # a lone surrogate cannot be sent
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, dict):
        return {json_safe(str(k)): json_safe(v) for k, v in list(value.items())[:50]}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in list(value)[:50]]
    return repr(value)[:200]


def problems(error: ValidationError, prefix: tuple[Any, ...] = ()) -> list[FieldProblem]:
    """One record per error; custom spec errors contribute their sub-path, value and allowed set."""
    return problems_from(error.errors(), prefix)


def problems_from(errors: Iterable[Mapping[str, Any]], prefix: tuple[Any, ...] = ()) -> list[FieldProblem]:
    """As :func:`problems`, from pydantic's error dicts (FastAPI hands those over)."""
    found: list[FieldProblem] = []
    for item in errors:
        loc = (*prefix, *item["loc"])
        ctx = item.get("ctx") or {}
        value = item.get("input")
        if item["type"] == "spec_error":
            loc = (*loc, *ctx.get("subloc", ()))
            value = ctx.get("value")
            message, allowed = ctx["message"], ctx.get("allowed", "")
        else:
            message, allowed = item["msg"], _allowed(ctx) or TYPE_ALLOWED.get(item["type"], "")
            if item["type"] == "spec_kind":
                loc, allowed = (*loc, "kind"), "train, sweep"
                value = value.get("kind") if isinstance(value, dict) else value
        found.append(FieldProblem(field_path(loc), json_safe(value), message, allowed))
    return found


TYPE_ALLOWED = {"bool_type": "true or false", "int_type": "an integer", "float_type": "a number"}
"""What a strict scalar field takes, for the type errors whose context says nothing."""


def _allowed(ctx: dict[str, Any]) -> str:
    symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    if any(key in ctx for key in symbols):
        return " and ".join(f"{symbols[key]} {value}" for key, value in ctx.items() if key in symbols)
    if "expected" in ctx:
        return str(ctx["expected"])
    if "pattern" in ctx:
        return f"matching {ctx['pattern']}"
    if "min_length" in ctx or "max_length" in ctx:
        return f"length {ctx.get('min_length', 0)}..{ctx.get('max_length', 'inf')}"
    return ""
