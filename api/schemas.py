"""Response bodies of the API (requests use the service's specs directly)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JobState = Literal["queued", "running", "succeeded", "partially_failed", "failed", "cancelled"]


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: Literal["train", "sweep"]
    name: str | None
    state: JobState = Field(
        description="partially_failed: a sweep some of whose trials failed; result.trials counts the trials by state."
    )
    priority: int
    attempt: int
    max_attempts: int
    created_by: str | None
    progress: float | None = Field(description="0..1, reported by the worker's heartbeats.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    lease_owner: str | None = Field(description="The worker running the job.")
    lease_expires_at: datetime | None
    error: str | None
    result: dict[str, Any] | None
    spec: dict[str, Any] = Field(description="The normalised spec, every default filled in.")


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: int | None = Field(description="Pass as `cursor` for the next (older) page; null at the end.")


class EventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    kind: str
    message: str
    data: dict[str, Any] | None
    created_at: datetime


class EventList(BaseModel):
    items: list[EventOut]


class TrialOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    trial_index: int
    config: dict[str, Any]
    state: str
    best_metric: float | None
    result: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime


class TrialList(BaseModel):
    items: list[TrialOut]


class MetricSeries(BaseModel):
    name: str
    trial_index: int | None
    steps: list[int]
    values: list[float | None] = Field(description="Non-finite values (a diverged run) are null.")


class MetricHistory(BaseModel):
    series: list[MetricSeries]


class LogTail(BaseModel):
    lines: list[str]
    next_offset: int = Field(description="Pass as `offset` to get only what was appended since.")


class ArtifactOut(BaseModel):
    path: str
    size: int
    modified: float = Field(description="Unix time.")


class ArtifactList(BaseModel):
    items: list[ArtifactOut]


class HParamOut(BaseModel):
    name: str
    type: str
    default: Any
    allowed: str
    low: float | None
    high: float | None
    low_open: bool
    high_open: bool
    choices: list[Any] | None
    doc: str


class MethodOut(BaseModel):
    name: str
    kind: Literal["weighting", "aggregator", "wrapper"]
    description: str
    paper: str
    scale: str
    shardable: bool
    hparams: list[HParamOut]


class MethodList(BaseModel):
    methods: list[MethodOut]


class Runnable(BaseModel):
    name: str
    source: str = Field(description="built-in, or the plugin's package and entry point.")
    options: list[str] = Field(default_factory=list, description="Option names (problem_options or model_options).")
    models: list[str] = Field(default_factory=list, description="Problems: the models that fit it.")
    error: str | None = Field(None, description="Why a plugin that is installed cannot be used.")
    workers: list[str] = Field(description="The live workers that advertise it.")


class RunnableList(BaseModel):
    problems: list[Runnable]
    models: list[Runnable]


class Health(BaseModel):
    status: Literal["ok"]


class CodeOut(BaseModel):
    digest: str = Field(description="Name this in a training spec's ``code`` to run the shipped code.")
    size: int
