"""What the live workers can run, so the API refuses a job none of them can take and each worker claims only
jobs it can run.

A worker advertises when it starts and on every heartbeat (busy or idle): the problems and models installed
where it runs (each with its source, built-in or a plugin's package and entry point, and its option names) and
its Ray cluster's CPUs and GPUs. A worker counts as live for ``LIVE_LEASES`` lease lengths after it last
advertised. With no live worker the API accepts any name (the job waits for one); with some, a problem or model
none of them advertises is refused naming the ones they do. A job asking for GPUs waits for a worker with GPUs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select

from flatmtl.service.db import Database
from flatmtl.service.errors import UnrunnableError
from flatmtl.service.models import Worker, utcnow

LIVE_LEASES = 2.0
DEFAULT_MODEL = "default"


@dataclass(frozen=True)
class Capabilities:
    cpus: float
    gpus: float
    problems: list[dict[str, Any]]
    """``{"name", "source", "options", "models"}`` per problem (``error`` instead where a plugin cannot load)."""
    models: list[dict[str, Any]]
    """``{"name", "source", "options"}`` per model."""

    def usable(self, kind: str) -> set[str]:
        entries = self.problems if kind == "problem" else self.models
        return {e["name"] for e in entries if "error" not in e}

    def refusal(self, spec: Mapping[str, Any]) -> str | None:
        """Why this worker cannot run a job's spec (a sweep's base for a sweep), or None when it can."""
        train = spec.get("base", spec)
        problem, model = train.get("problem"), train.get("model", DEFAULT_MODEL)
        if problem not in self.usable("problem") and not shipped(train):
            return f"problem {problem!r} is not installed here"
        if model != DEFAULT_MODEL and model not in self.usable("model"):
            return f"model {model!r} is not installed here"
        gpus = float(train.get("resources", {}).get("gpus", 0.0))
        if gpus > 0 and self.gpus <= 0:
            return "the job asks for GPUs and this worker's cluster has none"
        return None


def shipped(train: Mapping[str, Any]) -> bool:
    """A problem imported from the job's shipped code: the worker that claims the job checks it."""
    return bool(train.get("code")) and ":" in str(train.get("problem", ""))


def advertise(db: Database, name: str, capabilities: Capabilities, *, now: datetime | None = None) -> None:
    """Record (or refresh) what worker ``name`` can run."""
    now = now or utcnow()
    with db.write() as session:
        row = session.get(Worker, name)
        if row is None:
            row = Worker(name=name, started_at=now)
            session.add(row)
        row.cpus, row.gpus = capabilities.cpus, capabilities.gpus
        row.problems, row.models = capabilities.problems, capabilities.models
        row.seen_at = now


def retire(db: Database, name: str) -> None:
    """A worker that stops says so, rather than counting as live until its window passes."""
    with db.write() as session:
        session.execute(delete(Worker).where(Worker.name == name))


def live(db: Database, lease_seconds: float, *, now: datetime | None = None) -> dict[str, Capabilities]:
    since = (now or utcnow()) - timedelta(seconds=LIVE_LEASES * lease_seconds)
    with db.read() as session:
        rows = session.scalars(select(Worker).where(Worker.seen_at >= since).order_by(Worker.name)).all()
    return {row.name: Capabilities(row.cpus, row.gpus, list(row.problems), list(row.models)) for row in rows}


def check_runnable_somewhere(db: Database, spec: Mapping[str, Any], lease_seconds: float) -> None:
    """Raise UnrunnableError (422) when live workers exist and none advertises the spec's problem or model."""
    workers = live(db, lease_seconds)
    if not workers:
        return
    train = spec.get("base", spec)
    prefix = "spec.base" if "base" in spec else "spec"
    for kind, value in (("problem", train.get("problem")), ("model", train.get("model", DEFAULT_MODEL))):
        if (kind == "model" and value == DEFAULT_MODEL) or (kind == "problem" and shipped(train)):
            continue
        offered = set().union(*(w.usable(kind) for w in workers.values()))
        if value not in offered:
            raise UnrunnableError(f"{prefix}.{kind}", str(value), ", ".join(sorted(offered)) or "nothing")


def catalog(db: Database, lease_seconds: float) -> dict[str, list[dict[str, Any]]]:
    """The problems and models live workers advertise, each once, with the workers that offer it."""
    merged: dict[str, dict[tuple[str, str], dict[str, Any]]] = {"problems": {}, "models": {}}
    for worker, capabilities in live(db, lease_seconds).items():
        for key, entries in (("problems", capabilities.problems), ("models", capabilities.models)):
            for entry in entries:
                known = merged[key].setdefault((entry["name"], entry["source"]), {**entry, "workers": []})
                known["workers"].append(worker)
    return {key: sorted(found.values(), key=lambda e: e["name"]) for key, found in merged.items()}
