"""Mean and spread over seeds, and how they are printed.

The spread is the sample standard deviation (n - 1 in the denominator) over seeds; with one seed there
is no spread and it is NaN, printed as such. A diverged run (NaN metric) makes its group's mean NaN:
divergence is a result and is never averaged away.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float
    n: int

    def text(self, digits: int = 2, scale: float = 1.0) -> str:
        if not math.isfinite(self.mean):
            return "diverged" if self.n else "n/a"
        spread = f" ± {self.std * scale:.{digits}f}" if math.isfinite(self.std) else ""
        return f"{self.mean * scale:.{digits}f}{spread}"

    def as_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "std": self.std, "n": self.n}


def summarize(values: Iterable[float]) -> Summary:
    array = np.asarray(list(values), dtype=float)
    if array.size == 0:
        return Summary(math.nan, math.nan, 0)
    mean = float(array.mean())
    std = float(array.std(ddof=1)) if array.size > 1 else math.nan
    return Summary(mean, std, int(array.size))


def paired_difference(treated: Sequence[float], base: Sequence[float]) -> Summary:
    """Per-seed differences ``treated[s] - base[s]`` (same seed: same initialization and batch order)."""
    if len(treated) != len(base):
        raise ValueError(f"paired values need the same seeds: {len(treated)} vs {len(base)}")
    return summarize(t - b for t, b in zip(treated, base, strict=True))


def percentile_band(values: Sequence[float]) -> tuple[float, float, float, float]:
    """(mean, std, 2.5th, 97.5th percentile), as in the Figure 3 of "Challenging common assumptions"."""
    array = np.asarray(values, dtype=float)
    return (
        float(array.mean()),
        float(array.std()),
        float(np.percentile(array, 2.5)),
        float(np.percentile(array, 97.5)),
    )
