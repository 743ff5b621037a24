"""The sweep spec: a search over a training spec's fields, run as Ray Tune trials that each train.

The space addresses any field of the base spec by dotted path (``method.wrapper.hparams.rho``,
``optimizer.lr``, ...; ``wrapper.rho`` is short for the first). Every value a domain can take is checked
by validating the base spec with that value set, so a sweep that is accepted has only valid trials.
"""

from __future__ import annotations

import copy
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator, model_validator

from flatmtl.service.catalog import KINDS, Catalog
from flatmtl.service.specs.base import JobName, SpecModel, context_catalog, field_error
from flatmtl.service.specs.train import (
    GPU_SHARES_ALLOWED,
    MethodChoice,
    MethodConfig,
    Resources,
    TrainSpec,
    gpu_share_problem,
)

MetricName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_./\-]+$")]
MAX_TRIALS = 10_000


class Domain(SpecModel):
    """One dimension of a search space: a grid or a choice of values, or a (log-)uniform range."""

    type: Literal["grid", "choice", "uniform", "loguniform"]
    values: list[Any] | None = Field(None, min_length=1, max_length=MAX_TRIALS)
    low: float | None = Field(None, allow_inf_nan=False)
    high: float | None = Field(None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _consistent(self) -> Domain:
        if self.type in ("grid", "choice"):
            if self.values is None or self.low is not None or self.high is not None:
                raise field_error(f"{self.type} takes values, not low/high", subloc=("values",), value=self.values)
            return self
        if self.values is not None or self.low is None or self.high is None:
            raise field_error(f"{self.type} takes low and high, not values", subloc=("low",), value=self.low)
        if not self.low < self.high:
            raise field_error(
                f"low={self.low!r} must be below high={self.high!r}",
                subloc=("high",),
                value=self.high,
                allowed=f"> {self.low}",
            )
        if self.type == "loguniform" and self.low <= 0:
            raise field_error("loguniform needs low > 0", subloc=("low",), value=self.low, allowed="> 0")
        return self

    def probes(self) -> list[Any]:
        """Values that must all be valid for the whole domain to be: each value, or both ends."""
        return list(self.values) if self.values is not None else [self.low, self.high]


class TuneSchedulerConfig(SpecModel):
    """How trials are stopped early or perturbed (Ray Tune's FIFO, ASHA or PBT).

    PBT (population based training) copies a better trial's checkpoint into a worse one every
    ``perturbation_interval`` epochs and perturbs the ``mutate`` fields of its config; a trial resumes from the
    copied checkpoint, whose model, optimizer and schedule state it keeps, so only method hyper-parameters
    (``method.<kind>.hparams.<name>``) may be mutated.
    """

    name: Literal["fifo", "asha", "pbt"] = "fifo"
    grace_period: int = Field(1, ge=1, le=100_000, description="asha: epochs before a trial may be stopped.")
    reduction_factor: float = Field(2.0, gt=1, le=100, description="asha: keep 1/reduction_factor per rung.")
    perturbation_interval: int | None = Field(
        None, ge=1, le=100_000, description="pbt (required): epochs between perturbations."
    )
    mutate: list[str] | None = Field(
        None,
        min_length=1,
        max_length=32,
        description="pbt: the search-space fields it perturbs (short paths like wrapper.rho allowed); "
        "default: every field of the space.",
    )
    quantile_fraction: float = Field(
        0.25, gt=0, le=0.5, description="pbt: the bottom share of trials that clone the top share."
    )
    resample_probability: float = Field(
        0.25, ge=0, le=1, description="pbt: chance that a mutated value is drawn afresh rather than perturbed."
    )

    @model_validator(mode="after")
    def _fits_scheduler(self) -> TuneSchedulerConfig:
        given = self.model_fields_set
        pbt_only = ("perturbation_interval", "mutate", "quantile_fraction", "resample_probability")
        if self.name == "pbt":
            if self.perturbation_interval is None:
                raise field_error(
                    "pbt needs perturbation_interval (epochs between perturbations)",
                    subloc=("perturbation_interval",),
                    value=None,
                    allowed="an integer >= 1",
                )
        else:
            for key in pbt_only:
                if key in given and getattr(self, key) != type(self).model_fields[key].default:
                    raise field_error(
                        f"{key} applies to pbt only, not {self.name}",
                        subloc=(key,),
                        value=getattr(self, key),
                        allowed="pbt",
                    )
        return self


def _leaf_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted paths of every non-model field (sweepable scalars), method hparams excluded."""
    paths: list[str] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths.extend(_leaf_paths(annotation, f"{prefix}{name}."))
        elif name != "hparams" and (prefix or name not in ("kind", "name")):
            paths.append(prefix + name)
    return paths


OPTION_FIELDS = ("problem_options", "model_options")
SWEEPABLE = tuple(
    p
    for p in _leaf_paths(TrainSpec)
    if p not in (*OPTION_FIELDS, *TrainSpec.EXECUTION_FIELDS) and not p.startswith("resources.")
)
"""Resources are the sweep's (``resources_per_trial``), one value for every trial, so they are not swept; nor
are the base's execution settings (``deterministic``, ``loader_workers``), which every trial runs with."""


def set_path(document: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted path in a spec document; a method given by name becomes ``{"name": ...}`` first."""
    *parents, leaf = path.split(".")
    node = document
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {"name": child} if isinstance(child, str) else {}
            node[part] = child
        node = child
    node[leaf] = value


def _expand_short_path(path: str) -> str:
    """``wrapper.rho`` is shorthand for ``method.wrapper.hparams.rho`` (likewise weighting, aggregator)."""
    parts = path.split(".")
    return f"method.{parts[0]}.hparams.{parts[1]}" if len(parts) == 2 and parts[0] in KINDS else path


def _is_method_hparam(path: str) -> bool:
    parts = path.split(".")
    return len(parts) == 4 and parts[0] == "method" and parts[1] in KINDS and parts[2] == "hparams"


class SweepSpec(SpecModel):
    """A search over a training spec's fields, run as Ray Tune trials that are each a training run."""

    kind: Literal["sweep"] = "sweep"
    name: JobName | None = None
    base: TrainSpec
    space: dict[str, Domain] = Field(min_length=1, max_length=32)
    search: Literal["grid", "random", "optuna"] = Field(
        "grid", description="optuna: Optuna's TPE sampler (seeded by base.seed) proposes each trial from the last."
    )
    scheduler: TuneSchedulerConfig = Field(default_factory=TuneSchedulerConfig)
    metric: MetricName
    mode: Literal["min", "max"]
    num_trials: int | None = Field(
        None, ge=1, le=MAX_TRIALS, description="random and optuna: required; grid: the grid's size."
    )
    max_concurrent_trials: int | None = Field(None, ge=1, le=1024)
    resources_per_trial: Resources | None = Field(None, description="Per process of a trial; default: base.resources.")

    @field_validator("space", mode="before")
    @classmethod
    def _expand_short_paths(cls, space: Any) -> Any:
        """``wrapper.rho`` is shorthand for ``method.wrapper.hparams.rho`` (likewise weighting, aggregator)."""
        if not isinstance(space, dict):
            return space
        expanded: dict[str, Any] = {}
        for path, domain in space.items():
            full = _expand_short_path(str(path))
            if full in expanded:
                raise field_error(f"{path!r} and {full!r} name the same field", subloc=(path,), value=path)
            expanded[full] = domain
        return expanded

    @field_validator("space")
    @classmethod
    def _space_fits_base(cls, space: dict[str, Domain], info: ValidationInfo) -> dict[str, Domain]:
        base: TrainSpec | None = info.data.get("base")
        if base is None:
            return space
        catalog = context_catalog(info)
        document = base.model_dump(mode="json", exclude_unset=False)
        for path, domain in space.items():
            cls._check_path(path, base, catalog)
            for probe in domain.probes():
                trial = copy.deepcopy(document)
                set_path(trial, path, probe)
                try:
                    TrainSpec.model_validate(trial, context=info.context)
                except ValidationError as error:
                    first = error.errors()[0]
                    reason = first["ctx"]["message"] if first["type"] == "spec_error" else first["msg"]
                    raise field_error(
                        f"{path}={probe!r} is not valid: {reason}",
                        subloc=(path,),
                        value=probe,
                        allowed=first.get("ctx", {}).get("allowed", ""),
                    ) from None
        return space

    @staticmethod
    def _check_path(path: str, base: TrainSpec, catalog: Catalog) -> None:
        parts = path.split(".")
        if path in SWEEPABLE or (len(parts) == 2 and parts[0] in OPTION_FIELDS and parts[1]):
            return
        if len(parts) == 4 and parts[0] == "method" and parts[2] == "hparams" and parts[1] in MethodConfig.model_fields:
            choice: MethodChoice = getattr(base.method, parts[1])
            method = catalog.method(choice.kind, choice.name)
            if any(hp.name == parts[3] for hp in method.hparams):
                return
            allowed = ", ".join(f"method.{parts[1]}.hparams.{hp.name}" for hp in method.hparams) or "none"
            raise field_error(
                f"sweep space over unknown field {path!r}: {choice.kind} {choice.name!r} has no hyper-parameter "
                f"{parts[3]!r}; allowed: {allowed}",
                subloc=(path,),
                value=path,
                allowed=allowed,
            )
        allowed = ", ".join(
            [*SWEEPABLE, "method.<kind>.hparams.<name>", "problem_options.<key>", "model_options.<key>"]
        )
        raise field_error(
            f"sweep space over unknown field {path!r}; allowed: {allowed}", subloc=(path,), value=path, allowed=allowed
        )

    @model_validator(mode="after")
    def _one_gpu_per_rank(self) -> SweepSpec:
        """The base spec checked its own resources; the trials' may be the sweep's, for every swept process count."""
        if self.resources_per_trial is None:
            return self
        gpus = self.resources_per_trial.gpus
        swept = self.space.get("processes")
        for processes in [self.base.processes, *(swept.probes() if swept is not None else ())]:
            problem = gpu_share_problem(gpus, int(processes))
            if problem is not None:
                raise field_error(
                    problem, subloc=("resources_per_trial", "gpus"), value=gpus, allowed=GPU_SHARES_ALLOWED
                )
        return self

    @model_validator(mode="after")
    def _trial_count(self) -> SweepSpec:
        if self.search == "grid":
            ranges = [p for p, d in self.space.items() if d.type in ("uniform", "loguniform")]
            if ranges:
                raise field_error(
                    f"grid search cannot enumerate the ranges {', '.join(ranges)}; use search='random' or grid values",
                    subloc=("search",),
                    value=self.search,
                    allowed="random",
                )
            size = self.grid_size()
            if size > MAX_TRIALS:
                raise field_error(
                    f"the grid has {size} points; at most {MAX_TRIALS}",
                    subloc=("space",),
                    value=size,
                    allowed=f"<= {MAX_TRIALS}",
                )
            if self.num_trials is not None and self.num_trials != size:
                raise field_error(
                    f"grid search runs every grid point ({size}); num_trials={self.num_trials} does not match",
                    subloc=("num_trials",),
                    value=self.num_trials,
                    allowed=f"{size} or null",
                )
        else:
            grids = [p for p, d in self.space.items() if d.type == "grid"]
            if grids:
                raise field_error(
                    f"{self.search} search samples; {', '.join(grids)} use grid, use type='choice'",
                    subloc=("space", grids[0]),
                    value="grid",
                    allowed="choice, uniform, loguniform",
                )
            if self.num_trials is None:
                raise field_error(
                    f"{self.search} search needs num_trials", subloc=("num_trials",), value=None, allowed=">= 1"
                )
        return self

    @model_validator(mode="after")
    def _scheduler_fits_space(self) -> SweepSpec:
        if self.scheduler.name != "pbt":
            return self
        if self.search == "optuna":
            raise field_error(
                "pbt chooses each trial's next config itself and cannot follow optuna's suggestions",
                subloc=("search",),
                value=self.search,
                allowed="grid, random",
            )
        mutate = self.scheduler.mutate or sorted(self.space)
        expanded = [_expand_short_path(path) for path in mutate]
        for index, (given, path) in enumerate(zip(mutate, expanded, strict=True)):
            if path not in self.space:
                allowed = ", ".join(sorted(self.space))
                raise field_error(
                    f"pbt can mutate only fields of the search space; {given!r} is not one (allowed: {allowed})",
                    subloc=("scheduler", "mutate", str(index)),
                    value=given,
                    allowed=allowed,
                )
            if not _is_method_hparam(path):
                raise field_error(
                    f"pbt mutates method hyper-parameters only: a trial resumes from another trial's checkpoint, "
                    f"which restores its optimizer and schedule state, so {path!r} cannot change mid-run",
                    subloc=("scheduler", "mutate", str(index)) if self.scheduler.mutate else ("space", path),
                    value=path,
                    allowed="method.<kind>.hparams.<name> fields of the space",
                )
        if len(set(expanded)) != len(expanded):
            raise field_error("pbt's mutate lists a field twice", subloc=("scheduler", "mutate"), value=mutate)
        return self

    def mutated_paths(self) -> list[str]:
        """PBT's perturbed fields as full dotted paths (empty for other schedulers)."""
        if self.scheduler.name != "pbt":
            return []
        return [_expand_short_path(path) for path in self.scheduler.mutate or sorted(self.space)]

    def trial_resources(self) -> Resources:
        return self.resources_per_trial or self.base.resources

    def grid_size(self) -> int:
        return math.prod(len(d.values or ()) for d in self.space.values())

    def trial_count(self) -> int:
        """How many trials the sweep runs."""
        return self.grid_size() if self.search == "grid" else int(self.num_trials or 0)
