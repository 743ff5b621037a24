"""What a client submits: a training or a sweep spec (``kind`` selects) and how the queue treats it."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Discriminator, Field, Tag, model_validator

from flatmtl.service.catalog import Catalog
from flatmtl.service.specs.base import SpecModel, check_document
from flatmtl.service.specs.sweep import SweepSpec
from flatmtl.service.specs.train import TrainSpec


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

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        """Before any field: what passes is stored as it is and read back by every later request."""
        check_document(data)
        return data


def parse_spec(document: dict[str, Any], catalog: Catalog | None = None) -> TrainSpec | SweepSpec:
    """A train or sweep spec from a plain dict (``kind`` selects; it defaults to train)."""
    context = {"catalog": catalog} if catalog is not None else None
    model: type[TrainSpec] | type[SweepSpec] = SweepSpec if document.get("kind") == "sweep" else TrainSpec
    return model.model_validate(document, context=context)
