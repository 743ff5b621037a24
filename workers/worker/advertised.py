"""What this worker can run, as it advertises it: the problems and models installed where it runs (from the
problem registry, plugins included) and its Ray cluster's CPUs and GPUs."""

from __future__ import annotations

from flatmtl.service.capabilities import Capabilities


def local_capabilities() -> Capabilities:
    import ray

    from flatmtl.workers.problems.registry import catalog

    entries = catalog()
    resources = ray.cluster_resources()
    strip = [{k: v for k, v in e.items() if k != "kind"} for e in entries]
    return Capabilities(
        cpus=float(resources.get("CPU", 0.0)),
        gpus=float(resources.get("GPU", 0.0)),
        problems=[e for e, raw in zip(strip, entries, strict=True) if raw["kind"] == "problem"],
        models=[e for e, raw in zip(strip, entries, strict=True) if raw["kind"] == "model"],
    )
