"""Exports the method registry to ``service/method_catalog.json``.

The API and the control plane never import torch, yet job specs must be validated against the
methods the workers can build. They read this generated file instead; a test checks that the
committed file equals what the registry produces, so it cannot drift.

    python -m flatmtl.workers.catalog_export          # regenerate
    python -m flatmtl.workers.catalog_export --check  # exit 1 if the committed file is stale
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

CATALOG_PATH = Path(__file__).resolve().parent.parent / "service" / "method_catalog.json"


def build_catalog() -> dict[str, Any]:
    """Every registered method, sorted by kind then name so the file is stable across import orders."""
    from flatmtl.workers.mtl import methods
    from flatmtl.workers.mtl.registry import KINDS

    listed = sorted(methods(), key=lambda m: (KINDS.index(m.kind), m.name))
    return {"version": 1, "methods": [method.describe() for method in listed]}


def render_catalog() -> str:
    return json.dumps(build_catalog(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    text = render_catalog()
    if "--check" in argv:
        current = CATALOG_PATH.read_text() if CATALOG_PATH.exists() else ""
        if current != text:
            print(f"{CATALOG_PATH} is stale; run: python -m flatmtl.workers.catalog_export", file=sys.stderr)
            return 1
        return 0
    CATALOG_PATH.write_text(text)
    print(f"wrote {CATALOG_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
