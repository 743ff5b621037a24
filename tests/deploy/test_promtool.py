"""promtool accepts the scrape config, the rules, the rule unit tests and the exposition text."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from flatmtl.service.telemetry.names import sample_names
from tests.deploy.promql import PROMETHEUS_CONFIG, RULE_FILES, RULE_TESTS, binary
from tests.deploy.samples import growing_telemetry


def _promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([binary("promtool"), *args], input=stdin, capture_output=True, timeout=60, check=False)


def _assert_clean(result: subprocess.CompletedProcess[bytes]) -> None:
    output = (result.stdout + result.stderr).decode()
    assert result.returncode == 0, output
    assert "WARNING" not in output.upper(), output


def test_config_is_valid() -> None:
    _assert_clean(_promtool("check", "config", str(PROMETHEUS_CONFIG)))


@pytest.mark.parametrize("rules", RULE_FILES, ids=lambda path: path.name)
def test_rules_are_valid(rules: Path) -> None:
    _assert_clean(_promtool("check", "rules", str(rules)))


@pytest.mark.parametrize("tests", RULE_TESTS, ids=lambda path: path.name)
def test_rule_unit_tests_pass(tests: Path) -> None:
    _assert_clean(_promtool("test", "rules", str(tests)))


def test_every_alert_has_a_unit_test() -> None:
    alerts = {
        line.split(":", 1)[1].strip()
        for path in RULE_FILES
        for line in path.read_text().splitlines()
        if line.strip().startswith("- alert:")
    }
    tested = {
        line.split(":", 1)[1].strip()
        for path in RULE_TESTS
        for line in path.read_text().splitlines()
        if line.strip().startswith("alertname:")
    }
    assert alerts and alerts <= tested, f"alerts without a promtool test: {sorted(alerts - tested)}"


def test_exposition_text_passes_check_metrics() -> None:
    metrics = growing_telemetry()
    metrics.render()
    text = metrics.render()
    exported = {line.split("{")[0].split(" ")[0] for line in text.decode().splitlines() if not line.startswith("#")}
    assert sample_names() <= exported, "the sample registry must carry every metric"
    _assert_clean(_promtool("check", "metrics", stdin=text))
