"""Data files shipped inside installed packages (scikit-learn's digits, river's Yeast), found without importing
the package: importing ``sklearn.datasets`` or ``river.datasets`` costs seconds, reading their CSV milliseconds."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from flatmtl.workers.problems.errors import DataNotFoundError, ProblemError


def bundled_file(package: str, relative: str, extra: str) -> Path:
    """``relative`` inside the installed ``package``; ``extra`` names what to install when it is missing."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ProblemError(f"this problem needs the {package!r} package ({extra})")
    path = Path(spec.origin).parent / relative
    if not path.is_file():
        raise DataNotFoundError(path, f"expected the data file bundled with {package}")
    return path
