"""The committed dashboards are the generator's output, well-formed, and query only exported metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flatmtl.service.telemetry.names import sample_names
from tests.deploy.promql import (
    DASHBOARD_FILES,
    PROMETHEUS_SERIES,
    dashboard_expressions,
    grafana_to_promql,
    load_generator,
    metric_names,
    rule_expressions,
    without_healthy_empty_matchers,
)


def test_committed_json_is_current() -> None:
    rendered = load_generator().rendered_files()
    assert sorted(rendered) == DASHBOARD_FILES
    for path, text in rendered.items():
        assert path.read_text() == text, f"{path.name} is stale: run python deploy/grafana/generate.py"


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda path: path.name)
def test_panels_have_unique_ids_and_fit_the_grid(path: Path) -> None:
    panels = json.loads(path.read_text())["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    cells = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & area, f"{panel['title']} overlaps another panel"
        cells |= area
        assert panel["targets"], f"{panel['title']} has no query"


def test_training_dashboard_selects_jobs_everywhere() -> None:
    """Every training query filters on the job variable, which lists the running jobs."""
    training = json.loads(next(path for path in DASHBOARD_FILES if path.name == "training.json").read_text())
    assert [variable["name"] for variable in training["templating"]["list"]] == ["job_id"]
    for panel in training["panels"]:
        for target in panel["targets"]:
            assert "$job_id" in target["expr"], panel["title"]
    kinds = {panel["type"] for panel in training["panels"]}
    assert "heatmap" in kinds


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('sum by (job_id, le) (rate(a_bucket{job_id=~"$job_id", x!="y>1"}[$__rate_interval]))', {"a_bucket"}),
        ("rate(a_sum[5m]) / on (job_id) group_left (task) b > bool 0.5 * c offset 5m", {"a_sum", "b", "c"}),
        ("label_values(flatmtl_job_attempt, job_id)", {"flatmtl_job_attempt"}),
        ("histogram_quantile(0.9, sum without (route) (rate(d[1h:1m])))", {"d"}),
    ],
)
def test_metric_name_parser(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


@pytest.mark.parametrize(
    ("where", "expr"), dashboard_expressions() + rule_expressions(), ids=lambda value: str(value)[:60]
)
def test_expressions_refer_only_to_exported_metrics(where: str, expr: str) -> None:
    names = metric_names(expr)
    assert names, f"{where}: no metric found in {expr!r}"
    unknown = names - sample_names() - PROMETHEUS_SERIES
    assert not unknown, f"{where}: {sorted(unknown)} are not exported by flatmtl.service.telemetry.names"


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('sum(rate(a{status=~"5.."}[1m])) / sum(rate(a[1m]))', "sum(rate(a[1m])) / sum(rate(a[1m]))"),
        ('a{route="/x", status=~"5.."}', 'a{route="/x"}'),
        ('a{status=~"5..", route="/x"}', 'a{route="/x"}'),
        ('a{status=~"4.."}', None),
    ],
)
def test_the_healthy_empty_rule_drops_only_its_matchers(expr: str, expected: str | None) -> None:
    assert without_healthy_empty_matchers(expr) == expected


def test_dashboard_queries_are_sent_with_the_job_selected() -> None:
    expr = 'sum by (job_id) (rate(a{job_id=~"$job_id"}[$__rate_interval]))'
    assert grafana_to_promql(expr, "1m", "12") == 'sum by (job_id) (rate(a{job_id=~"12"}[1m]))'
    assert grafana_to_promql("label_values(flatmtl_job_attempt, job_id)", "1m", "12") == "flatmtl_job_attempt"
