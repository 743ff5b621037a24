"""``flatmtl reproduce --quick`` end to end into a temporary folder: every claim section, table and figure is
written, every verdict in the report is the one the rule gives for the checks' numbers, and claim 9's sweeps ran
through the service (REST, SQLite, a worker on a local Ray) and are reused from its database afterwards."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from flatmtl.workers.reproduce import sweeps
from flatmtl.workers.reproduce.claims import sensitivity
from flatmtl.workers.reproduce.claims.base import Context
from flatmtl.workers.reproduce.cli import reproduce_command
from flatmtl.workers.reproduce.pipeline import CLAIMS
from flatmtl.workers.reproduce.scale import QUICK
from flatmtl.workers.reproduce.verdict import VERDICTS, Check, verdict
from tests.worker.cluster import require_ray

pytestmark = pytest.mark.slow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_ray()
    root = tmp_path_factory.mktemp("reproduce")
    args = ["--quick", "--out", str(root / "docs"), "--runs-dir", str(root / "runs"), "--workers", "2"]
    result = CliRunner().invoke(reproduce_command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return root / "docs"


def test_every_claim_has_a_section_tables_figures_and_a_verdict(quick: Path) -> None:
    report = (quick / "results.md").read_text()
    document = json.loads((quick / "results" / "results.json").read_text())
    assert [claim["number"] for claim in document["claims"]] == list(range(1, len(CLAIMS) + 1)) == list(range(1, 10))
    for claim in document["claims"]:
        section = report.split(f"## Claim {claim['number']}: ")[1].split("\n## ")[0]
        assert f"**Verdict: {claim['verdict']}**" in section
        assert claim["verdict"] in VERDICTS and claim["checks"]
        assert (
            len(re.findall(r"^\| --- ", section, flags=re.MULTILINE)) >= 2
        )  # the checks and at least one result table
        assert claim["figures"]
        for name in claim["figures"]:
            assert f"](results/{name})" in section
            assert (quick / "results" / name).read_bytes().startswith(PNG_MAGIC)
    for heading in ("## Machine and time", "## What was reduced", "## Verdicts"):
        assert heading in report


def test_verdicts_follow_from_the_checks_and_the_checks_from_the_numbers(quick: Path) -> None:
    claims = {c["number"]: c for c in json.loads((quick / "results" / "results.json").read_text())["claims"]}
    for claim in claims.values():
        assert claim["verdict"] == verdict([Check(**check) for check in claim["checks"]])
    first = claims[1]
    erm_last = first["numbers"]["last_window"]["ERM"]["mean"]
    assert first["checks"][0]["holds"] == (erm_last > 0.5)
    fmtl_last = first["numbers"]["last_window"]["F-MTL"]["mean"]
    assert first["checks"][4]["holds"] == (fmtl_last < erm_last)
    second = claims[2]
    for check in second["checks"]:
        label = check["statement"].split(" has a higher")[0]
        assert check["holds"] == (second["numbers"][label]["gain_over_base"]["mean"] > 0)


def test_step_pass_counts_match_the_papers_accounting(quick: Path) -> None:
    """Counting passes does not depend on timing noise: these checks must hold on any machine."""
    cost = json.loads((quick / "results" / "results.json").read_text())["claims"][2]
    counts = [check for check in cost["checks"] if "counts match" in check["statement"]]
    assert len(counts) == 2 and all(check["holds"] for check in counts)


def test_configs_record_every_run_its_seed_and_the_machine(quick: Path) -> None:
    configs = json.loads((quick / "results" / "configs.json").read_text())
    assert configs["scale"]["name"] == "quick" and configs["scale"]["seeds"] == [0]
    assert configs["machine"]["torch"] and configs["machine"]["cores"] >= 1
    timing = configs["timing"]
    assert timing["wall_seconds"] > 0 and timing["runs_reused"] == 0 and timing["training_invocations"] == 1
    runs = configs["runs"]
    assert runs and all(run["status"] == "SUCCEEDED" for run in runs)
    assert all(run["seed"] == run["spec"]["seed"] == 0 for run in runs)
    assert len({run["key"] for run in runs}) == len(runs)
    report = (quick / "results.md").read_text()
    assert f"| training runs (engine) | {len(runs)} |" in report


def last_epoch(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "metrics_epochs.jsonl").read_text().splitlines()[-1])


def test_claim_9_is_read_from_the_sweeps_trials_and_a_finished_sweep_is_reused(quick: Path) -> None:
    runs_dir = quick.parent / "runs"
    configs = json.loads((quick / "results" / "configs.json").read_text())
    numbers = json.loads((quick / "results" / "results.json").read_text())["claims"][8]["numbers"]
    context = Context(scale=QUICK.with_workers(2), figures=quick / "results", mnist_dir=None)
    grids = sensitivity.grids(context.scale)
    recorded = {sweep["key"]: sweep for sweep in configs["sweeps"]}
    for grid in grids.values():
        sweep = recorded[grid.request(context.scale).key]
        assert sweep["state"] == "succeeded" and not sweep["reused"]
        assert sweep["spec"] == grid.request(context.scale).spec
        points = {tuple(t["config"][f"method.wrapper.hparams.{axis}"] for axis in grid.axes) for t in sweep["trials"]}
        assert points == {(row, column) for row in grid.rows for column in grid.columns}
        table = numbers[grid.label]["average_accuracy"]
        for trial in sweep["trials"]:  # the API's numbers against the trial's own run files
            assert trial["state"] == "succeeded" and trial["seed"] == trial["spec"]["seed"] == 0
            run = last_epoch(runs_dir / trial["run_dir"])
            i, j = (
                values.index(trial["config"][f"method.wrapper.hparams.{axis}"])
                for axis, values in zip(grid.axes, (grid.rows, grid.columns), strict=True)
            )
            expected = 50 * (run["test/top_left/accuracy"] + run["test/bottom_right/accuracy"])
            assert table[i][j] == pytest.approx(expected)
    worker_log = runs_dir / "service" / "worker.log"
    logged = worker_log.read_text()
    again = sweeps.execute(sensitivity.sweeps(context), runs_dir, concurrency=2, timeout_s=60, echo=lambda _: None)
    assert worker_log.read_text() == logged, "a finished sweep needs no worker"
    for key, outcome in again.items():
        assert outcome.reused and outcome.job_id == recorded[key]["job_id"]
        assert [t.config for t in outcome.trials] == [t["config"] for t in recorded[key]["trials"]]
