"""The verdict rule and the statistics behind it, on constructed numbers."""

from __future__ import annotations

import math

import pytest

from flatmtl.workers.reproduce.stats import paired_difference, summarize
from flatmtl.workers.reproduce.verdict import NOT, PARTLY, REPRODUCED, Check, at_most, greater, verdict


def checks(held: int, total: int) -> list[Check]:
    return [Check(f"c{i}", i < held, "") for i in range(total)]


@pytest.mark.parametrize(
    ("held", "total", "expected"),
    [(3, 3, REPRODUCED), (1, 1, REPRODUCED), (2, 3, PARTLY), (2, 4, PARTLY), (1, 3, NOT), (0, 2, NOT), (0, 1, NOT)],
)
def test_verdict_is_all_half_or_fewer(held: int, total: int, expected: str) -> None:
    assert verdict(checks(held, total)) == expected


def test_a_verdict_needs_checks() -> None:
    with pytest.raises(ValueError, match="at least one check"):
        verdict([])


def test_comparisons_with_a_missing_number_do_not_hold() -> None:
    assert greater("x", 2.0, 1.0, names=("a", "b")).holds
    assert not greater("x", 1.0, 1.0, names=("a", "b")).holds
    assert not greater("x", math.nan, 1.0, names=("a", "b")).holds
    assert not greater("x", 1.0, math.nan, names=("a", "b")).holds
    assert at_most("x", 0.05, 0.05, name="v").holds
    assert not at_most("x", 0.06, 0.05, name="v").holds
    assert not at_most("x", math.nan, 0.05, name="v").holds


def test_spread_is_the_sample_standard_deviation() -> None:
    values = [1.0, 2.0, 4.0]
    mean = 7.0 / 3.0
    expected = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    summary = summarize(values)
    assert summary.mean == pytest.approx(mean)
    assert summary.std == pytest.approx(expected)
    assert summary.n == 3
    assert math.isnan(summarize([5.0]).std) and summarize([5.0]).text() == "5.00"
    assert summarize([]).text() == "n/a"


def test_a_diverged_seed_makes_the_group_diverged() -> None:
    summary = summarize([80.0, math.nan, 81.0])
    assert math.isnan(summary.mean) and summary.text() == "diverged"


def test_paired_difference_is_per_seed() -> None:
    """A constant shift per seed has zero spread however much the seeds differ from each other."""
    base = [50.0, 70.0, 90.0]
    difference = paired_difference([b + 1.5 for b in base], base)
    assert difference.mean == pytest.approx(1.5) and difference.std == pytest.approx(0.0)
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference([1.0], [1.0, 2.0])
