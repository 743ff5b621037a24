"""Writes FlatMTL's Grafana dashboards from the panel definitions below.

    python deploy/grafana/generate.py          # rewrite deploy/grafana/dashboards/*.json
    python deploy/grafana/generate.py --check  # exit 1 if the committed JSON is not current

Panels live in Python so ids and layout are computed, every query is greppable, and a test can
check that each expression refers only to metrics ``flatmtl.service.telemetry.names`` lists.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DASHBOARDS_DIR = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "flatmtl-prometheus"}
JOB = 'job_id=~"$job_id"'
RUN = "job {{job_id}} trial {{trial}}"
"""Legend of a training run: a sweep's trials carry their index; a training job has no trial label."""
RATE = "$__rate_interval"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    """One panel; ``width`` is in Grafana's 24-column grid."""

    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 12
    height: int = 8
    min: float | None = None
    max: float | None = None
    stacked: bool = False


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...]
    variables: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    tags: tuple[str, ...] = ("flatmtl",)


JOB_VARIABLE_QUERY = "label_values(flatmtl_job_attempt, job_id)"
JOB_VARIABLE = {
    "name": "job_id",
    "label": "Job",
    "type": "query",
    "datasource": DATASOURCE,
    "definition": JOB_VARIABLE_QUERY,
    "query": {"query": JOB_VARIABLE_QUERY, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
    "refresh": 2,
    "includeAll": True,
    "allValue": ".+",
    "multi": True,
    "sort": 3,
    "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
}


def _quantiles(metric: str, by: str, selector: str = "", window: str = RATE, label: str = "") -> tuple[Query, ...]:
    label = label or ("{{" + by.split(",")[0].strip() + "}}" if by else "")
    group = f"{by}, le" if by else "le"
    matchers = f"{{{selector}}}" if selector else ""
    return tuple(
        Query(
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{matchers}[{window}])))",
            f"{label} p{int(q * 100)}".strip(),
        )
        for q in (0.5, 0.95)
    )


TRAINING = Dashboard(
    uid="flatmtl-training",
    title="FlatMTL / Training",
    description="Running jobs: throughput, step time, per-task losses and how the tasks' gradients conflict.",
    variables=(JOB_VARIABLE,),
    panels=(
        Panel(
            "Throughput",
            "Samples per second of each running job, and of each running trial of a sweep.",
            (Query(f"sum by (job_id, trial) (rate(flatmtl_training_samples_total{{{JOB}}}[{RATE}]))", RUN),),
            unit="short",
        ),
        Panel(
            "Step time",
            "Median and 95th percentile step wall time, and the mean.",
            (
                *_quantiles("flatmtl_training_step_seconds", "job_id, trial", JOB, label=RUN),
                Query(
                    f"sum by (job_id, trial) (rate(flatmtl_training_step_seconds_sum{{{JOB}}}[{RATE}]))"
                    f" / sum by (job_id, trial) (rate(flatmtl_training_step_seconds_count{{{JOB}}}[{RATE}]))",
                    f"{RUN} mean",
                ),
            ),
            unit="s",
        ),
        Panel(
            "Per-task loss",
            "Latest training loss of each task.",
            (Query(f"flatmtl_training_loss{{{JOB}}}", f"{RUN} {{{{task}}}}"),),
        ),
        Panel(
            "Gradient conflict ratio",
            "Share of task pairs whose shared-parameter gradients point against each other (negative inner product).",
            (Query(f"flatmtl_training_gradient_conflict_ratio{{{JOB}}}", RUN),),
            unit="percentunit",
            min=0,
            max=1,
        ),
        Panel(
            "Task-pair gradient cosine",
            "Cosine similarity of every task pair over time (jobs with at most 8 tasks); blue agrees, red conflicts.",
            (Query(f"flatmtl_training_gradient_cosine{{{JOB}}}", f"{RUN} {{{{task_a}}}} / {{{{task_b}}}}"),),
            kind="heatmap",
            min=-1,
            max=1,
            width=24,
        ),
        Panel(
            "Gradient cosine, min and mean over pairs",
            "Summary of the pairwise cosines, exported for any number of tasks.",
            (
                Query(f"flatmtl_training_gradient_cosine_min{{{JOB}}}", f"{RUN} min"),
                Query(f"flatmtl_training_gradient_cosine_mean{{{JOB}}}", f"{RUN} mean"),
            ),
            min=-1,
            max=1,
        ),
        Panel(
            "Gradient magnitude similarity",
            "2|g_a||g_b|/(|g_a|^2+|g_b|^2) per task pair (1: equal norms), with the min and mean over pairs.",
            (
                Query(
                    f"flatmtl_training_gradient_magnitude_similarity{{{JOB}}}", f"{RUN} {{{{task_a}}}} / {{{{task_b}}}}"
                ),
                Query(f"flatmtl_training_gradient_magnitude_similarity_min{{{JOB}}}", f"{RUN} min"),
                Query(f"flatmtl_training_gradient_magnitude_similarity_mean{{{JOB}}}", f"{RUN} mean"),
            ),
            min=0,
            max=1,
        ),
        Panel(
            "Per-task gradient norm",
            "Norm of each task's gradient of the shared parameters.",
            (Query(f"flatmtl_training_gradient_norm{{{JOB}}}", f"{RUN} {{{{task}}}}"),),
        ),
        Panel(
            "SAM and aggregation overhead",
            "Share of each step spent in the wrapper's perturbed passes and in gradient aggregation.",
            (Query(f"flatmtl_training_step_phase_ratio{{{JOB}}}", f"{RUN} {{{{phase}}}}"),),
            unit="percentunit",
            min=0,
            max=1,
        ),
        Panel(
            "Bytes communicated per step",
            "Bytes one rank sends in collectives per step (per-task gradients, Gram, norms).",
            (Query(f"flatmtl_training_step_communication_bytes{{{JOB}}}", RUN),),
            unit="bytes",
        ),
        Panel(
            "Attempt",
            "Attempt of each running job; above 1 it lost a lease before and resumed from its checkpoint.",
            (Query(f"flatmtl_job_attempt{{{JOB}}}", "job {{job_id}}"),),
            kind="stat",
        ),
    ),
)

CONTROL_PLANE = Dashboard(
    uid="flatmtl-control-plane",
    title="FlatMTL / Control plane",
    description="Queue, workers, leases and the API.",
    panels=(
        Panel("Jobs by state", "Jobs in each state.", (Query("flatmtl_jobs", "{{state}}"),), stacked=True),
        Panel(
            "Queue wait",
            "Time from submission to first claim (claims over the last 15 minutes), and the oldest queued job.",
            (
                *_quantiles("flatmtl_queue_wait_seconds", "", window="15m"),
                Query("flatmtl_queue_oldest_job_age_seconds", "oldest queued"),
            ),
            unit="s",
        ),
        Panel(
            "API requests",
            "Requests per second by route template and status code.",
            (
                Query(
                    f"sum by (route, status) (rate(flatmtl_api_request_duration_seconds_count[{RATE}]))",
                    "{{status}} {{route}}",
                ),
            ),
            unit="reqps",
        ),
        Panel(
            "API latency",
            "Median and 95th percentile request latency by route template.",
            _quantiles("flatmtl_api_request_duration_seconds", "route"),
            unit="s",
        ),
        Panel(
            "API errors",
            "Share of requests answered with 5xx.",
            (
                Query(
                    f'sum(rate(flatmtl_api_request_duration_seconds_count{{status=~"5.."}}[{RATE}]))'
                    f" / sum(rate(flatmtl_api_request_duration_seconds_count[{RATE}]))",
                    "5xx share",
                ),
            ),
            unit="percentunit",
            min=0,
        ),
        Panel(
            "Workers",
            "Workers holding an unexpired lease, and the seconds since each busy worker's last heartbeat.",
            (
                Query("flatmtl_workers_alive", "alive"),
                Query("flatmtl_worker_heartbeat_age_seconds", "heartbeat age {{worker}}"),
            ),
        ),
        Panel(
            "Lease expirations, retries and failures",
            "Events per 15 minutes: leases that expired without a heartbeat, jobs retried by users, jobs failed.",
            (
                Query("increase(flatmtl_lease_expirations_total[15m])", "lease expirations"),
                Query("increase(flatmtl_job_retries_total[15m])", "retries"),
                Query("increase(flatmtl_job_failures_total[15m])", "failures"),
            ),
        ),
        Panel(
            "Scrape health",
            "1 when Prometheus reaches the API and the API reads the database.",
            (
                Query('up{job="flatmtl-api"}', "API up"),
                Query("flatmtl_telemetry_source_up", "database readable"),
            ),
            kind="stat",
        ),
    ),
)

DASHBOARDS = {"training": TRAINING, "control-plane": CONTROL_PLANE}


def _field_config(panel: Panel) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit}
    if panel.min is not None:
        defaults["min"] = panel.min
    if panel.max is not None:
        defaults["max"] = panel.max
    if panel.kind == "timeseries":
        defaults["custom"] = {"stacking": {"mode": "normal" if panel.stacked else "none", "group": "A"}}
    return {"defaults": defaults, "overrides": []}


def _options(panel: Panel) -> dict[str, Any]:
    if panel.kind == "heatmap":
        return {
            "calculate": False,
            "color": {"mode": "scheme", "scheme": "RdBu", "min": panel.min, "max": panel.max, "steps": 64},
            "yAxis": {"axisPlacement": "left"},
            "rowsFrame": {"layout": "auto"},
            "cellGap": 1,
            "legend": {"show": True},
            "tooltip": {"mode": "single", "yHistogram": False},
        }
    if panel.kind == "stat":
        return {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}, "colorMode": "value"}
    return {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}}


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": _field_config(panel),
        "options": _options(panel),
        "targets": [
            {
                "refId": chr(ord("A") + index),
                "datasource": DATASOURCE,
                "expr": query.expr,
                "legendFormat": query.legend,
                "range": True,
            }
            for index, query in enumerate(panel.queries)
        ],
    }


def render(dashboard: Dashboard) -> dict[str, Any]:
    """The dashboard's JSON model: panels flow left to right in the 24-column grid, ids count from 1."""
    panels, x, y, row_height = [], 0, 0, 0
    for panel_id, panel in enumerate(dashboard.panels, start=1):
        if x + panel.width > 24:
            x, y, row_height = 0, y + row_height, 0
        panels.append(_panel_json(panel, panel_id, x, y))
        x, row_height = x + panel.width, max(row_height, panel.height)
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": list(dashboard.tags),
        "editable": False,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "utc",
        "templating": {"list": list(dashboard.variables)},
        "panels": panels,
    }


def rendered_files() -> dict[Path, str]:
    """Each dashboard file's path and exact text."""
    return {
        DASHBOARDS_DIR / f"{name}.json": json.dumps(render(dashboard), indent=2, sort_keys=True) + "\n"
        for name, dashboard in DASHBOARDS.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a committed dashboard differs")
    args = parser.parse_args()
    stale = [path for path, text in rendered_files().items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path} is not current: run python deploy/grafana/generate.py", file=sys.stderr)
        return 1 if stale else 0
    DASHBOARDS_DIR.mkdir(parents=True, exist_ok=True)
    for path, text in rendered_files().items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
