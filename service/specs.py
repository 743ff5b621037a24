"""Job specs: the one contract between the API, the CLI and the workers.

A training job names a problem, a model and a method (a loss weighting, a gradient aggregator and a
wrapper, each a name plus hyper-parameters validated against the method catalog), an optimizer, a
learning-rate schedule and its resources. A sweep is a base training spec plus a search space over
any of its fields by dotted path (``method.wrapper.hparams.rho``, ``optimizer.lr``, ...).

Scalars are strict: an int, float or bool field takes a JSON number or boolean, never a string ("3"), and a
bool is not a number (a float field takes an int). YAML spec files are read with :func:`load_yaml`, which
reads ``1e-3`` as a number as JSON does (PyYAML alone reads it as a string).

Errors name the field path, the value and what is allowed. Errors raised inside validators carry
``subloc`` (the path below the validated field) in their context so that the path points at the
offending key; :mod:`flatmtl.service.validation` appends it.
"""

from __future__ import annotations

import copy
import math
import re
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from flatmtl.service.catalog import KINDS, Catalog, CatalogError, Kind, load_catalog

Identifier = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z][A-Za-z0-9_\-]*$")]
JobName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")]
MetricName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_./\-]+$")]
Sharding = Literal["none", "zero1", "zero2", "zero3"]
ShardingBackend = Literal["flatmtl", "deepspeed"]
MAX_TRIALS = 10_000


def _catalog(info: ValidationInfo) -> Catalog:
    """The catalog from the validation context (tests pass their own), else the committed one."""
    context = info.context or {}
    return context.get("catalog") or load_catalog()


def field_error(message: str, *, subloc: tuple[str, ...] = (), value: Any = None, allowed: str = "") -> Exception:
    return PydanticCustomError(
        "spec_error", "{message}", {"message": message, "subloc": subloc, "value": value, "allowed": allowed}
    )


class SpecLoader(yaml.SafeLoader):
    """YAML 1.1 (PyYAML) floats need a dot, so ``1e-3`` would be the string "1e-3", which strict specs refuse;
    this loader reads exponent notation as a float, as JSON and YAML 1.2 do."""


SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def load_yaml(text: str) -> Any:
    """A spec document from YAML or JSON text, numbers typed as JSON would type them."""
    return yaml.load(text, Loader=SpecLoader)


class SpecModel(BaseModel):
    """Strict about unknown keys, and says which keys exist when it refuses one; strict about scalar types, so a
    string is never silently turned into a number or a boolean."""

    model_config = ConfigDict(extra="forbid", validate_assignment=False, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            fields = set(cls.model_fields)
            for key in data:
                if key not in fields:
                    allowed = ", ".join(sorted(fields))
                    raise field_error(
                        f"unknown field {key!r}; allowed: {allowed}", subloc=(str(key),), value=key, allowed=allowed
                    )
        return data


class MethodChoice(SpecModel):
    """A method by name with hyper-parameters; a bare string is shorthand for ``{"name": ...}``."""

    kind: ClassVar[Kind]
    name: str
    hparams: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @field_validator("name")
    @classmethod
    def _known_method(cls, name: str, info: ValidationInfo) -> str:
        try:
            _catalog(info).method(cls.kind, name)
        except CatalogError as error:
            raise field_error(error.message, value=name, allowed=error.allowed) from None
        return name

    @field_validator("hparams")
    @classmethod
    def _valid_hparams(cls, hparams: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        name = info.data.get("name")
        if name is None:
            return hparams
        try:
            return _catalog(info).method(cls.kind, name).resolve(hparams)
        except CatalogError as error:
            raise field_error(
                error.message, subloc=(error.key or "",), value=error.value, allowed=error.allowed
            ) from None


class WeightingChoice(MethodChoice):
    kind: ClassVar[Kind] = "weighting"


class AggregatorChoice(MethodChoice):
    kind: ClassVar[Kind] = "aggregator"


class WrapperChoice(MethodChoice):
    kind: ClassVar[Kind] = "wrapper"


class MethodConfig(SpecModel):
    """Loss weighting (before backward) x gradient aggregator x step wrapper."""

    weighting: WeightingChoice = Field(default_factory=lambda: WeightingChoice(name="ew"))
    aggregator: AggregatorChoice = Field(default_factory=lambda: AggregatorChoice(name="mean"))
    wrapper: WrapperChoice = Field(default_factory=lambda: WrapperChoice(name="none"))


class OptimizerConfig(SpecModel):
    """Adam, AdamW or SGD with momentum; one flat model so sweeps address every field the same way."""

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0, le=10, allow_inf_nan=False)
    weight_decay: float = Field(0.0, ge=0, le=10, allow_inf_nan=False)
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD only.")
    nesterov: bool = Field(False, description="SGD only; needs momentum > 0.")
    # Not strict: a strict tuple takes only Python tuples, not the arrays JSON and YAML give; its floats stay strict.
    betas: tuple[float, float] = Field((0.9, 0.999), strict=False, description="Adam and AdamW only; each in [0, 1).")

    @model_validator(mode="after")
    def _fits_optimizer(self) -> OptimizerConfig:
        given = self.model_fields_set
        if self.name != "sgd":
            for key in ("momentum", "nesterov"):
                if key in given and getattr(self, key) != type(self).model_fields[key].default:
                    raise field_error(
                        f"{key} applies to sgd only, not {self.name}",
                        subloc=(key,),
                        value=getattr(self, key),
                        allowed="sgd",
                    )
        elif "betas" in given and self.betas != type(self).model_fields["betas"].default:
            raise field_error("betas apply to adam and adamw only", subloc=("betas",), value=list(self.betas))
        if self.nesterov and self.momentum == 0:
            raise field_error("nesterov needs momentum > 0", subloc=("momentum",), value=0.0, allowed="(0, 1)")
        for beta in self.betas:
            if not 0 <= beta < 1:
                raise field_error(
                    f"beta {beta!r} out of range", subloc=("betas",), value=list(self.betas), allowed="[0, 1)"
                )
        return self


class SchedulerConfig(SpecModel):
    """Learning-rate schedule over epochs."""

    name: Literal["constant", "cosine", "step"] = "constant"
    warmup_epochs: int = Field(0, ge=0, le=10_000, description="Linear warm-up before the schedule.")
    min_lr: float = Field(0.0, ge=0, allow_inf_nan=False, description="cosine: the final learning rate.")
    step_size: int = Field(1, ge=1, le=10_000, description="step: epochs between decays.")
    gamma: float = Field(0.1, gt=0, le=1, description="step: decay factor.")


class Resources(SpecModel):
    """What each process (DDP rank) of a run reserves on the Ray cluster; the worker passes it to Ray Train's
    ScalingConfig. A request the cluster cannot meet (GPUs on a CPU-only cluster) fails the job at claim time."""

    cpus: float = Field(1.0, gt=0, le=1024, description="CPUs per process; also its torch threads.")
    gpus: float = Field(0.0, ge=0, le=64, description="GPUs per process; > 0 trains on CUDA (NCCL).")


PRECISIONS = ("fp32", "bf16")


class TrainSpec(SpecModel):
    """One multi-task training run."""

    kind: Literal["train"] = "train"
    name: JobName | None = None
    problem: Identifier
    problem_options: dict[str, Any] = Field(
        default_factory=dict, description="Keyword options of the problem (data_dir, sizes...); checked by the worker."
    )
    model: Identifier = "default"
    model_options: dict[str, Any] = Field(default_factory=dict, description="Keyword options of the model.")
    method: MethodConfig = Field(default_factory=MethodConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    epochs: int = Field(10, ge=1, le=100_000)
    batch_size: int = Field(64, ge=1, le=1_000_000, description="Per process.")
    seed: int = Field(0, ge=0, le=2**32 - 1)
    processes: int = Field(1, ge=1, le=1024, description="Data-parallel workers (DDP ranks).")
    sharding: Sharding = Field("none", description="zero1: optimizer state; zero2: + gradients; zero3: + parameters.")
    sharding_backend: ShardingBackend = Field(
        "flatmtl",
        description="Who partitions parameters and optimizer state: the engine's own flat layout, or DeepSpeed ZeRO "
        "(float32 master weights). Per-task gradients are reduced by the engine either way.",
    )
    resources: Resources = Field(default_factory=Resources)
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: forward passes and losses under bfloat16 autocast (CPU or CUDA); fp32 weights."
    )

    @field_validator("precision", mode="before")
    @classmethod
    def _known_precision(cls, value: Any) -> Any:
        if value == "fp16":
            raise field_error(
                "fp16 needs dynamic loss scaling, which the per-task gradients of the MTL step do not get; "
                "bf16 has fp32's range and needs none",
                value=value,
                allowed=", ".join(PRECISIONS),
            )
        return value

    @model_validator(mode="after")
    def _shardable(self, info: ValidationInfo) -> TrainSpec:
        if self.sharding_backend == "deepspeed" and self.sharding == "none":
            raise field_error(
                "the deepspeed backend partitions state, so it needs a ZeRO stage",
                subloc=("sharding",),
                value=self.sharding,
                allowed="zero1, zero2, zero3 (or sharding_backend 'flatmtl')",
            )
        if self.sharding in ("zero2", "zero3"):
            catalog = _catalog(info)
            for kind in ("weighting", "aggregator", "wrapper"):
                choice: MethodChoice = getattr(self.method, kind)
                if not catalog.method(choice.kind, choice.name).shardable:
                    raise field_error(
                        f"{kind} {choice.name!r} needs whole gradients and cannot run with sharding={self.sharding!r}",
                        subloc=("sharding",),
                        value=self.sharding,
                        allowed="none, zero1",
                    )
        return self


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
SWEEPABLE = tuple(p for p in _leaf_paths(TrainSpec) if p not in OPTION_FIELDS and not p.startswith("resources."))
"""Resources are the sweep's (``resources_per_trial``), one value for every trial, so they are not swept."""


def _set_path(document: dict[str, Any], path: str, value: Any) -> None:
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
        catalog = _catalog(info)
        document = base.model_dump(mode="json", exclude_unset=False)
        for path, domain in space.items():
            cls._check_path(path, base, catalog)
            for probe in domain.probes():
                trial = copy.deepcopy(document)
                _set_path(trial, path, probe)
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


def _spec_kind(value: Any) -> str:
    """``kind`` selects the spec; a training spec may leave it out."""
    kind = value.get("kind", "train") if isinstance(value, dict) else getattr(value, "kind", "train")
    return kind if kind in ("train", "sweep") else str(kind)


JobSpec = Annotated[
    Annotated[TrainSpec, Tag("train")] | Annotated[SweepSpec, Tag("sweep")],
    Discriminator(_spec_kind, custom_error_type="spec_kind", custom_error_message="kind must be 'train' or 'sweep'"),
]


class JobSubmission(SpecModel):
    """What a client submits: the spec plus how the queue should treat it."""

    spec: JobSpec
    priority: int = Field(0, ge=-1000, le=1000, description="Higher runs first; equal priorities run in order.")
    max_attempts: int | None = Field(None, ge=1, le=100, description="Default: the server's setting.")
    idempotency_key: str | None = Field(
        None, min_length=1, max_length=200, description="A repeat with the same key returns the existing job."
    )


def parse_spec(document: dict[str, Any], catalog: Catalog | None = None) -> TrainSpec | SweepSpec:
    """A train or sweep spec from a plain dict (``kind`` selects; it defaults to train)."""
    context = {"catalog": catalog} if catalog is not None else None
    model: type[TrainSpec] | type[SweepSpec] = SweepSpec if document.get("kind") == "sweep" else TrainSpec
    return model.model_validate(document, context=context)
