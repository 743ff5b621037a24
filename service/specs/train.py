"""The training spec: one multi-task training run.

It names a problem, a model and a method (a loss weighting, a gradient aggregator and a wrapper, each a
name plus hyper-parameters validated against the method catalog), an optimizer, a learning-rate schedule,
its processes and sharding, and the resources each process reserves.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from flatmtl.service.catalog import CatalogError, Kind
from flatmtl.service.specs.base import JobName, SpecModel, context_catalog, field_error

Identifier = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z][A-Za-z0-9_\-]*$")]
ProblemName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=200,
        pattern=r"^([A-Za-z][A-Za-z0-9_\-]*|[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*)$",
        description="A problem's name, or ``module:attribute`` of a Problem class in the job's shipped ``code``.",
    ),
]
CodeDigest = Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$", description="An upload's digest (POST /v1/code).")]
Sharding = Literal["none", "zero1", "zero2", "zero3"]
ShardingBackend = Literal["flatmtl", "deepspeed"]


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
            context_catalog(info).method(cls.kind, name)
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
            return context_catalog(info).method(cls.kind, name).resolve(hparams)
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


def gpu_share_problem(gpus: float, processes: int) -> str | None:
    """Why ``gpus`` per process cannot train ``processes`` ranks, or None. Ray places fractional GPUs on a
    shared device, but NCCL refuses two ranks of one group on the same GPU; above one GPU Ray takes whole ones."""
    if gpus > 1 and not float(gpus).is_integer():
        return f"gpus={gpus!r} per process: above 1, Ray reserves whole GPUs only"
    if processes > 1 and 0 < gpus < 1:
        return (
            f"gpus={gpus!r} per process with processes={processes}: Ray may place two ranks on one GPU, "
            "which NCCL refuses; give each rank a whole GPU"
        )
    return None


GPU_SHARES_ALLOWED = "0, a fraction below 1 with processes: 1, or a whole number"
MAX_LOADER_WORKERS = 64
DIAGNOSTICS_EVERY = 200
"""The MTL core's default (``flatmtl.workers.mtl.step.DEFAULT_DIAGNOSTICS_EVERY``), restated because the
service imports no torch; a test keeps the two equal."""


class TrainSpec(SpecModel):
    """One multi-task training run."""

    kind: Literal["train"] = "train"
    name: JobName | None = None
    problem: ProblemName
    code: CodeDigest | None = None
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
    diagnostics_every: int = Field(
        DIAGNOSTICS_EVERY,
        ge=1,
        le=1_000_000,
        description="Steps between gradient-conflict diagnostics (per-task gradients and their Gram); methods that "
        "need no per-task gradients (the mean aggregator) take one backward on the other steps.",
    )
    resources: Resources = Field(default_factory=Resources)
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: forward passes and losses under bfloat16 autocast (CPU or CUDA); fp32 weights."
    )
    deterministic: bool = Field(
        False,
        description="CUDA: deterministic kernels, a fixed cuBLAS workspace and no TF32, so a run repeats bit for bit "
        "on the same GPU model and library versions (slower). CPU runs repeat without it.",
    )
    loader_workers: int | None = Field(
        None,
        ge=0,
        le=MAX_LOADER_WORKERS,
        description="Processes per rank that read and collate training and evaluation batches ahead of the step "
        "(0: one background thread). null: 0 for data held in memory or a run on the CPU (the training threads "
        "take its cores); for data read per sample on CUDA up to 4, at most the CPUs each process reserves. The "
        "batches and their order are the same for every value.",
    )

    EXECUTION_FIELDS: ClassVar[tuple[str, ...]] = ("deterministic", "loader_workers")
    """How a run executes, not what it trains: a resumed run may change them (on CUDA a deterministic run and
    one that is not differ in the last bits, as two runs that are not do)."""

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
    def _shipped_problem_has_code(self) -> TrainSpec:
        if ":" in self.problem and self.code is None:
            raise field_error(
                "a module:attribute problem is imported from the job's shipped code, and the spec names none",
                subloc=("code",),
                value=None,
                allowed="the digest POST /v1/code returned (flatmtl submit --code DIR)",
            )
        return self

    @model_validator(mode="after")
    def _one_gpu_per_rank(self) -> TrainSpec:
        problem = gpu_share_problem(self.resources.gpus, self.processes)
        if problem is not None:
            raise field_error(
                problem, subloc=("resources", "gpus"), value=self.resources.gpus, allowed=GPU_SHARES_ALLOWED
            )
        return self

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
            catalog = context_catalog(info)
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
