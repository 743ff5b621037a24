"""Reads a training config (YAML or JSON, the same TrainSpec the API takes) and checks that it can run.

TrainSpec validates names and ranges without torch; ``check_runnable`` then builds what the spec names
(problem, model, methods) so that a typo in a problem option fails before any process starts, with the
field path, the value and what is allowed. Single-task reference values for Δm% have no TrainSpec field:
they ride in ``problem_options.references`` (``{"task/metric": value}``) and are taken out here before the
problem is built.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from flatmtl.service.specs.base import load_yaml
from flatmtl.service.specs.train import TrainSpec
from flatmtl.service.validation import problems as validation_problems
from flatmtl.workers.training.errors import ConfigError, ConfigProblem

REFERENCES_KEY = "references"
DTYPES = ("float32", "float64")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class RunOptions:
    """How a run executes, as opposed to what it trains (the spec). Only ``dtype`` changes the numbers, so a
    resumed run must keep it; the rest may differ between attempts.

    ``max_steps`` stops the run (with a checkpoint, status STOPPED) after that many optimizer steps in total;
    ``checkpoint_every`` also saves ``latest`` every that many steps (0: at epoch ends and when stopping).
    ``plots``: draw the PNG figures when the run ends (they can be redrawn from the metric files).
    ``threads``: torch threads per process (default: torch's own locally, the cores split over the ranks).
    Deterministic kernels and the loader's worker processes are the spec's (``deterministic``,
    ``loader_workers``): they travel with a submitted job and a resumed run may change them.
    """

    dtype: Literal["float32", "float64"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_steps: int | None = None
    checkpoint_every: int = 0
    keep_epoch_checkpoints: bool = False
    log_every: int = 1
    eval_split: str = "test"
    eval_batch_size: int = 256
    progress: bool = False
    plots: bool = True
    threads: int | None = None

    def __post_init__(self) -> None:
        checks = (
            ("dtype", self.dtype in DTYPES, ", ".join(DTYPES)),
            ("device", self.device in DEVICES, ", ".join(DEVICES)),
            ("max_steps", self.max_steps is None or self.max_steps >= 1, "an integer >= 1 or null"),
            ("checkpoint_every", self.checkpoint_every >= 0, "an integer >= 0"),
            ("log_every", self.log_every >= 1, "an integer >= 1"),
            ("eval_batch_size", self.eval_batch_size >= 1, "an integer >= 1"),
            ("threads", self.threads is None or self.threads >= 1, "an integer >= 1 or null"),
        )
        bad = [
            ConfigProblem(f"options.{name}", getattr(self, name), "is not allowed", allowed)
            for name, ok, allowed in checks
            if not ok
        ]
        if bad:
            raise ConfigError(bad)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_document(path: Path) -> dict[str, Any]:
    """The config file as a mapping; YAML is a superset of JSON, so one parser reads both."""
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError([ConfigProblem("", str(path), f"cannot read the config file: {error.strerror}")]) from None
    try:
        document = json.loads(text) if path.suffix.lower() == ".json" else load_yaml(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigError(
            [ConfigProblem("", None, f"not valid {path.suffix.lstrip('.') or 'YAML'}: {error}")], str(path)
        ) from None
    if not isinstance(document, dict):
        raise ConfigError(
            [ConfigProblem("", type(document).__name__, "the config must be a mapping of fields")], str(path)
        )
    return document


def parse_spec(document: Mapping[str, Any], source: str = "") -> TrainSpec:
    """A TrainSpec, or a ConfigError listing every invalid field (a sweep is refused: it is not one run)."""
    kind = document.get("kind", "train")
    if kind != "train":
        raise ConfigError([ConfigProblem("kind", kind, "flatmtl train runs one training spec", "train")], source)
    try:
        return TrainSpec.model_validate(dict(document))
    except ValidationError as error:
        found = [ConfigProblem(p.field, p.value, p.message, p.allowed) for p in validation_problems(error)]
        raise ConfigError(found, source) from None


def load_spec(path: Path, overrides: Mapping[str, Any] | None = None) -> TrainSpec:
    """The spec in ``path`` with the top-level ``overrides`` (the command line's) set, checked as one document."""
    spec = parse_spec({**read_document(path), **(overrides or {})}, str(path))
    check_runnable(spec, source=str(path))
    return spec


def split_references(spec: TrainSpec) -> tuple[dict[str, Any], dict[str, float]]:
    """(problem options to build the problem with, Δm% reference values by ``task/metric``)."""
    options = dict(spec.problem_options)
    references = options.pop(REFERENCES_KEY, None) or {}
    field = f"problem_options.{REFERENCES_KEY}"
    if not isinstance(references, Mapping):
        raise ConfigError([ConfigProblem(field, references, "must map 'task/metric' to a reference value")])
    bad = [
        ConfigProblem(f"{field}[{key!r}]", value, "must be a finite non-zero number", "a float != 0")
        for key, value in references.items()
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value == 0
    ]
    if bad:
        raise ConfigError(bad)
    return options, {str(k): float(v) for k, v in references.items()}


def model_name(spec: TrainSpec) -> str | None:
    """The model to ask the problem for; ``default`` means the problem's own default."""
    return None if spec.model == "default" else spec.model


def check_runnable(spec: TrainSpec, source: str = "") -> None:
    """Build the problem, model and methods once on CPU (no data is loaded, except one batch through a plugin's
    problem or model to check its shapes) so the config fails now, not mid-run. Every ``sharding`` value runs
    (TrainSpec already refuses methods that cannot be sharded)."""
    from flatmtl.workers import mtl, problems
    from flatmtl.workers.mtl.errors import MethodError
    from flatmtl.workers.problems import plugins

    found: list[ConfigProblem] = []
    try:
        options, references = split_references(spec)
    except ConfigError as error:
        raise ConfigError(error.problems, source) from None
    plugin = plugins.is_plugin(spec.problem, model_name(spec))
    # A plugin's own code may raise anything; it fails the job with that error rather than the worker.
    plugin_errors: tuple[type[BaseException], ...] = (Exception,) if plugin else ()
    try:
        problems.problem_class(spec.problem)
        problem = problems.build(spec.problem, **options)
    except (problems.ProblemError, FileNotFoundError, *plugin_errors) as error:
        try:
            problems.problem_class(spec.problem)
            field = "problem_options"
        except problems.ProblemError:
            field = "problem"
        found.append(ConfigProblem(field, spec.problem if field == "problem" else options, _reason(error)))
        raise ConfigError(found, source) from None
    try:
        model = problem.model(model_name(spec), **spec.model_options)
        if plugin:
            plugins.check_sample(f"{spec.problem} with model {spec.model}", problem, model)
    except (problems.ProblemError, TypeError, *plugin_errors) as error:
        field = "model" if model_name(spec) not in (None, *problem.model_names) else "model_options"
        found.append(ConfigProblem(field, spec.model if field == "model" else spec.model_options, _reason(error)))
    directions = problem.metric_directions()
    for key in references:
        if directions.get(key) is None:
            allowed = ", ".join(k for k, v in directions.items() if v is not None)
            found.append(
                ConfigProblem(f"problem_options.{REFERENCES_KEY}[{key!r}]", key, "is not a ranked metric", allowed)
            )
    for kind in ("weighting", "aggregator", "wrapper"):
        choice = getattr(spec.method, kind)
        try:
            mtl.spec(kind, choice.name).resolve(**choice.hparams)
        except MethodError as error:
            found.append(ConfigProblem(f"method.{kind}", choice.name, str(error)))
    if found:
        raise ConfigError(found, source)


def _reason(error: BaseException) -> str:
    """A problem's own errors speak for themselves; anything else (a plugin's code) is named by its type."""
    from flatmtl.workers.problems import ProblemError

    if isinstance(error, ProblemError | FileNotFoundError):
        return str(error)
    return f"{type(error).__name__}: {error}"
