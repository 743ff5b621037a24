"""Every PromQL expression the operator files contain, and the few rewrites the tests need."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
RULE_FILES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
RULE_TESTS = sorted((DEPLOY / "prometheus" / "tests").glob("*.yml"))
DASHBOARD_FILES = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))

PROMETHEUS_SERIES = frozenset({"up"})
"""Series Prometheus itself writes for every target; the only names not from flatmtl.service.telemetry.names."""

_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
    | {"inf", "nan", "atan2"}
)
_LABEL_VALUES = re.compile(r"^label_values\(\s*([^,]+?)\s*,\s*\w+\s*\)$")


def binary(name: str) -> str:
    """Path of a Prometheus tool; a missing one fails the test under CI and skips it elsewhere."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found (Debian package prometheus; scripts/bootstrap.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def load_generator() -> ModuleType:
    """deploy/grafana/generate.py as a module (deploy/ is not a package)."""
    spec = importlib.util.spec_from_file_location("flatmtl_grafana_generate", DEPLOY / "grafana" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def dashboard_expressions() -> list[tuple[str, str]]:
    """(where, expression) for every panel target and query variable of the committed dashboards."""
    found = []
    for path in DASHBOARD_FILES:
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            found += [(f"{path.name}: {panel['title']}", target["expr"]) for target in panel["targets"]]
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                found.append((f"{path.name}: variable {variable['name']}", variable["query"]["query"]))
    return found


def rule_expressions() -> list[tuple[str, str]]:
    """(where, expression) for every alerting and recording rule."""
    found = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                found.append((f"{path.name}: {rule.get('alert') or rule.get('record')}", rule["expr"].strip()))
    return found


def _strip(expr: str) -> str:
    """The expression without strings, label matchers, ranges, grouping label lists and dashboard variables."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\$\{[^}]*\}|\$\w+", "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    return re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers that are neither functions nor keywords."""
    match = _LABEL_VALUES.match(expr.strip())
    if match:
        expr = match.group(1)
    stripped = _strip(expr)
    names = set()
    for found in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", stripped):
        name, call = found.group(1), found.group(2)
        if call is None and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def grafana_to_promql(expr: str, rate_window: str, job_id: str) -> str:
    """A dashboard query as Grafana sends it with ``job_id`` selected: the job variable and
    ``$__rate_interval`` substituted, and a ``label_values(metric, label)`` variable query reduced to its metric."""
    match = _LABEL_VALUES.match(expr.strip())
    if match:
        return match.group(1)
    return expr.replace("$job_id", job_id).replace("$__rate_interval", rate_window)


HEALTHY_EMPTY_MATCHERS = ('status=~"5.."',)
"""Label matchers that select nothing while the service is healthy (no request has failed yet).

An expression with no result passes only if it holds one of these matchers and, with the matcher removed,
returns data: the metric is exported and the expression is well-formed; only the failure it counts is absent.
Counters of failures, lease expirations and retries need no such rule: they are exported at 0.
"""


def without_healthy_empty_matchers(expr: str) -> str | None:
    """``expr`` with every :data:`HEALTHY_EMPTY_MATCHERS` matcher removed; None if it holds none."""
    stripped = expr
    for matcher in HEALTHY_EMPTY_MATCHERS:
        stripped = re.sub(r"\{\s*" + re.escape(matcher) + r"\s*\}", "", stripped)
        stripped = re.sub(r",\s*" + re.escape(matcher) + r"|" + re.escape(matcher) + r"\s*,\s*", "", stripped)
    return None if stripped == expr else stripped


def keep_all_series(expr: str) -> str:
    """An alert expression with ``bool`` after each comparison, so it returns 0/1 for every series it
    compares instead of only the ones in alarm. Comparisons inside label matchers are left alone."""
    out, depth, index = [], 0, 0
    while index < len(expr):
        char = expr[index]
        if char == '"':
            end = expr.index('"', index + 1)
            out.append(expr[index : end + 1])
            index = end + 1
            continue
        depth += {"{": 1, "}": -1}.get(char, 0)
        operator = re.match(r"(==|!=|>=|<=|>|<)", expr[index:]) if depth == 0 else None
        if operator is not None and not re.match(r"\s*bool\b", expr[index + len(operator.group(1)) :]):
            out.append(f"{operator.group(1)} bool")
            index += len(operator.group(1))
            continue
        out.append(char)
        index += 1
    return "".join(out)
