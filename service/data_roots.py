"""Host paths in specs stay inside the operator's data roots (the ``data_roots`` setting).

A spec names host paths in its problem and model options (``data_dir``, ``fashion_dir``, any key ending in
``_dir``, ``_path``, ``_file`` or ``_root``), in a sweep's base spec and in the values its space tries for
such an option. A worker reads whatever they name, so a path outside the roots (``../../etc``, a symlink
out) would let any submitter read the worker's files; it is refused with the allowed roots.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from flatmtl.service.validation import FieldProblem

PATH_KEY = re.compile(r"^(?:dir|path|file|root)$|_(?:dir|path|file|root)$")
OPTION_GROUPS = ("problem_options", "model_options")


def _in_options(options: Any, field: str) -> Iterator[tuple[str, Any]]:
    if not isinstance(options, dict):
        return
    for key, value in options.items():
        if isinstance(value, dict):
            yield from _in_options(value, f"{field}.{key}")
        elif isinstance(key, str) and PATH_KEY.search(key):
            yield f"{field}.{key}", value


def path_values(spec: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """``(field, value)`` of every host path a (normalised) train or sweep spec names."""
    train = spec.get("base", spec) if spec.get("kind") == "sweep" else spec
    prefix = "spec.base" if train is not spec else "spec"
    for group in OPTION_GROUPS:
        yield from _in_options(train.get(group), f"{prefix}.{group}")
    for dotted, domain in (spec.get("space") or {}).items():
        group, _, key = str(dotted).partition(".")
        if group in OPTION_GROUPS and PATH_KEY.search(key.rsplit(".", 1)[-1]) and isinstance(domain, dict):
            for index, value in enumerate(domain.get("values") or []):
                yield f"spec.space[{dotted!r}].values[{index}]", value


def inside(value: str, roots: Sequence[Path]) -> bool:
    """Whether ``value``, with ``..`` and symlinks resolved, lies in one of ``roots``."""
    if not value or "\x00" in value or not os.path.isabs(value):
        return False
    real = Path(os.path.realpath(value))
    return any(real.is_relative_to(os.path.realpath(root)) for root in roots)


def confine(spec: dict[str, Any], roots: Sequence[Path]) -> list[FieldProblem]:
    """One problem per path outside ``roots`` (or not an absolute path)."""
    allowed = "an absolute path inside " + (", ".join(str(r) for r in roots) if roots else "no data root (none set)")
    return [
        FieldProblem(field, value, "a path outside the data roots", allowed)
        for field, value in path_values(spec)
        if value is not None and not (isinstance(value, str) and inside(value, roots))
    ]
