"""Problems by name."""

from __future__ import annotations

from typing import Any

from flatmtl.workers.problems.base import Problem
from flatmtl.workers.problems.celeba import CelebA
from flatmtl.workers.problems.dense import Cityscapes, NYUv2
from flatmtl.workers.problems.errors import ProblemError
from flatmtl.workers.problems.multi_image import MultiDigits, MultiFashion, MultiFashionMNIST, MultiMNIST
from flatmtl.workers.problems.office_home import OfficeHome
from flatmtl.workers.problems.options import accepted_options, check_options
from flatmtl.workers.problems.qm9 import QM9
from flatmtl.workers.problems.synthetic import SyntheticRegression
from flatmtl.workers.problems.table import TableProblem
from flatmtl.workers.problems.yeast import Yeast

PROBLEMS: dict[str, type[Problem]] = {
    cls.name: cls
    for cls in (
        MultiDigits,
        MultiMNIST,
        MultiFashion,
        MultiFashionMNIST,
        Yeast,
        NYUv2,
        Cityscapes,
        CelebA,
        OfficeHome,
        QM9,
        SyntheticRegression,
        TableProblem,
    )
}


def problem_names() -> list[str]:
    return sorted(PROBLEMS)


def problem_options(name: str) -> list[str]:
    """The options ``build(name, ...)`` accepts."""
    return accepted_options(_lookup(name))


def _lookup(name: str) -> type[Problem]:
    if name not in PROBLEMS:
        raise ProblemError(f"unknown problem {name!r}; known: {problem_names()}")
    return PROBLEMS[name]


def build(name: str, **options: Any) -> Problem:
    """The named problem; unknown options fail with the allowed ones, wrong paths with the missing file."""
    cls = _lookup(name)
    check_options(name, cls, options)
    return cls(**options)
