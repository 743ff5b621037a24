"""Problems by name."""

from __future__ import annotations

from typing import Any

from flatmtl.workers.problems import plugins
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
    """Built-in problems and those installed plugins declare (a broken plugin's name included: using it fails
    with the reason)."""
    return sorted({*PROBLEMS, *plugins.problem_plugins()})


def problem_options(name: str) -> list[str]:
    """The options ``build(name, ...)`` accepts."""
    return accepted_options(problem_class(name))


def problem_class(name: str) -> type[Problem]:
    """The class behind a problem name (a plugin's loaded on first use); unknown or broken names fail."""
    if name in PROBLEMS:
        return PROBLEMS[name]
    if ":" in name:
        return plugins.shipped_problem_class(name)
    found = plugins.problem_plugins().get(name)
    if found is None:
        raise ProblemError(f"unknown problem {name!r}; known: {problem_names()}")
    return found.get("problem")


def build(name: str, **options: Any) -> Problem:
    """The named problem; unknown options fail with the allowed ones, wrong paths with the missing file."""
    cls = problem_class(name)
    check_options(name, cls, options)
    problem = cls(**options)
    if name not in PROBLEMS:
        plugins.check_problem(name, problem)
    return problem


def catalog() -> list[dict[str, Any]]:
    """Every problem and model this installation can run: name, source (built-in or the plugin's package and
    entry point), options and, for problems, the models that fit; a plugin that cannot load carries its error."""
    from flatmtl.workers.problems.models import MODEL_NAMES

    found = plugins.problem_plugins()
    entries: list[dict[str, Any]] = []
    for name in problem_names():
        entry: dict[str, Any] = {"kind": "problem", "name": name, "source": "built-in"}
        if name in found:
            entry["source"] = found[name].source
        try:
            cls = problem_class(name)
            entry.update(options=accepted_options(cls), models=list(cls.model_names))
        except ProblemError as error:
            entry["error"] = str(error)
        entries.append(entry)
    models = plugins.model_plugins()
    entries += [{"kind": "model", "name": name, "source": "built-in"} for name in MODEL_NAMES]
    for name, plugin in sorted(models.items()):
        entry = {"kind": "model", "name": name, "source": plugin.source}
        if plugin.error is not None:
            entry["error"] = plugin.error
        else:
            entry["options"] = accepted_options(plugin.loaded, skip=("input_shape", "tasks"))
        entries.append(entry)
    return entries
