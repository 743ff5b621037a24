"""`flatmtl train` end to end on a tiny multi_digits config, and `flatmtl flatness` on the run it leaves."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from flatmtl.service.specs.train import TrainSpec
from flatmtl.workers import problems
from flatmtl.workers.training.checkpoint import load
from flatmtl.workers.training.cli import flatness_command, train_command
from flatmtl.workers.training.config import load_spec
from flatmtl.workers.training.rundir import RunDirectory
from tests.training.specs import TASKS, TEST_SIZE, TRAIN_SIZE, document

pytestmark = pytest.mark.slow

REFERENCES = {"top_left/accuracy": 0.8, "bottom_right/accuracy": 0.7}
STEP_KEYS = (
    "samples_per_s",
    "step_seconds",
    "conflict_ratio",
    "cosine_mean",
    "magnitude_similarity_mean",
    "sam_share",
    "aggregation_share",
    "communication_bytes",
    *(f"loss/{t}" for t in TASKS),
    *(f"grad_norm/{t}" for t in TASKS),
)


def _config(tmp_path: Path, **overrides: object) -> Path:
    spec = document(
        method={"aggregator": "pcgrad", "wrapper": {"name": "sam", "hparams": {"rho": 0.05}}},
        scheduler={"name": "cosine", "warmup_epochs": 1},
        **overrides,
    )
    spec["problem_options"]["references"] = REFERENCES
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    tmp_path = tmp_path_factory.mktemp("cli")
    out = tmp_path / "run"
    result = CliRunner().invoke(train_command, [str(_config(tmp_path)), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    return out, [json.loads(line) for line in result.stdout.splitlines()]


def test_train_writes_every_artifact(finished_run: tuple[Path, list[dict]]) -> None:
    out, lines = finished_run
    run = RunDirectory(out)
    epochs, steps_per_epoch = 2, TRAIN_SIZE // 32
    assert [line["event"] for line in lines] == ["epoch"] * epochs + ["summary"]
    summary = lines[-1]
    assert summary["status"] == "SUCCEEDED" and summary["steps"] == epochs * steps_per_epoch
    assert json.loads(run.summary.read_text())["status"] == "SUCCEEDED"

    resolved = TrainSpec.model_validate(json.loads(run.config.read_text()))
    assert resolved.scheduler.name == "cosine" and resolved.optimizer.name == "adam"  # the default, filled in

    step_lines = run.read_lines(run.step_metrics)
    assert [line["step"] for line in step_lines] == list(range(1, epochs * steps_per_epoch + 1))
    for line in step_lines:
        assert all(line[key] is not None for key in STEP_KEYS), line
    epoch_lines = run.read_lines(run.epoch_metrics)
    assert [line["epoch"] for line in epoch_lines] == [1, 2]
    for epoch, line in enumerate(epoch_lines):
        in_epoch = step_lines[epoch * steps_per_epoch : (epoch + 1) * steps_per_epoch]
        for task in TASKS:
            mean = sum(s[f"loss/{task}"] for s in in_epoch) / len(in_epoch)
            assert line[f"train/loss/{task}"] == pytest.approx(mean, rel=1e-12)
    # warm-up over the first epoch: step i uses i / steps_per_epoch of the base rate, then cosine decays it
    for line in step_lines[:steps_per_epoch]:
        assert line["lr"] == pytest.approx(1e-3 * line["step"] / steps_per_epoch)
    for line in step_lines[steps_per_epoch:]:
        after_warmup = line["step"] - 1 - steps_per_epoch
        cosine = 0.5 * (1 + math.cos(math.pi * after_warmup / steps_per_epoch))
        assert line["lr"] == pytest.approx(1e-3 * cosine)

    final = summary["final"]
    changes = [-(final[f"test/{key}"] - ref) / ref * 100 for key, ref in REFERENCES.items()]
    assert summary["delta_m"] == pytest.approx(sum(changes) / len(changes))

    # the checkpoint holds the final model: the problem's own evaluation gives the logged test metrics
    problem = problems.build("multi_digits", train_size=TRAIN_SIZE, test_size=TEST_SIZE)
    model = problem.model("mlp", hidden=(16,))
    model.load_state_dict(load(run.latest)["model"])
    for key, value in problem.evaluate(model, "test").items():
        assert final[f"test/{key}"] == pytest.approx(value, rel=1e-9, abs=1e-12), key

    for name in ("losses.png", "conflict.png", "magnitude_similarity.png"):
        assert (run.plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_flatness_of_the_trained_checkpoint(finished_run: tuple[Path, list[dict]]) -> None:
    out, _ = finished_run
    before = load(RunDirectory(out).latest)["model"]
    args = [str(out), "--json", "--samples", "64", "--iterations", "5", "--draws", "2", "--ascent-steps", "2"]
    result = CliRunner().invoke(flatness_command, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert json.loads((out / "flatness.json").read_text()) == report
    for task in TASKS:
        values = report["tasks"][task]
        assert values["rho_sharpness"] >= 0
        assert torch.isfinite(torch.tensor(values["hessian_top_eigenvalue"]))
    assert report["perturbed_mean"].keys() == report["metrics"].keys()
    after = load(RunDirectory(out).latest)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)

    # batches collated by loader processes are the thread's: every measure is the same, bit for bit
    result = CliRunner().invoke(flatness_command, [*args, "--loader-workers", "2"])
    assert result.exit_code == 0, result.output
    by_processes = json.loads(result.stdout)
    assert by_processes["settings"]["loader_workers"] == 2
    assert {k: v for k, v in by_processes.items() if k != "settings"} == {
        k: v for k, v in report.items() if k != "settings"
    }

    # a zero radius perturbs nothing: the r-ball metrics are the unperturbed ones, exactly
    result = CliRunner().invoke(flatness_command, [*args, "--radius", "0"])
    report = json.loads(result.stdout)
    assert report["perturbed_mean"] == report["metrics"]


@pytest.mark.parametrize(
    ("override", "field", "allowed"),
    [
        ({"method": {"wrapper": {"name": "sam", "hparams": {"rho": -1}}}}, "method.wrapper.hparams.rho", "[0"),
        ({"optimizer": {"name": "lbfgs"}}, "optimizer.name", "adam"),
        ({"problem_options": {"train_size": 64, "colour": True}}, "problem_options", "train_size"),
        ({"sharding": "zero4", "processes": 2}, "sharding", "zero3"),
        ({"model": "mlp", "model_options": {"depth": 3}}, "model_options", "hidden"),
        ({"problem_options": {"references": {"top_left/entropy": 1.0}}}, "problem_options.references", "accuracy"),
    ],
)
def test_bad_config_exits_2_naming_field_and_allowed(tmp_path: Path, override: dict, field: str, allowed: str) -> None:
    spec = document(**override)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(spec))
    result = CliRunner().invoke(train_command, [str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert field in result.stderr and allowed in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


def test_unreadable_config_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("problem: [unclosed\n")
    result = CliRunner().invoke(train_command, [str(path)])
    assert result.exit_code == 2 and "not valid yaml" in result.stderr
    result = CliRunner().invoke(train_command, [str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "cannot read" in result.stderr


def test_a_yaml_config_reads_exponent_notation_as_numbers(tmp_path: Path) -> None:
    """PyYAML alone reads ``1e-3`` as a string, which the strict spec would refuse."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document()) + "optimizer:\n  name: adam\n  lr: 1e-3\n")
    assert load_spec(path).optimizer.lr == 1e-3


def test_execution_flags_set_the_specs_fields_and_are_checked_like_them(tmp_path: Path) -> None:
    """``--deterministic`` and ``--loader-workers`` override the config's fields, land in the run's config.json
    (so a resume keeps them), and a bad value is refused like a bad field."""
    from flatmtl.workers.training import determinism

    path = tmp_path / "config.json"
    path.write_text(json.dumps(document()))
    refused = CliRunner().invoke(train_command, [str(path), "--loader-workers", "-1", "--out", str(tmp_path / "bad")])
    assert refused.exit_code == 2 and "loader_workers" in refused.stderr and ">= 0" in refused.stderr
    assert not (tmp_path / "bad").exists()
    out = tmp_path / "run"
    try:
        arguments = [str(path), "--deterministic", "--loader-workers", "1", "--max-steps", "1", "--out", str(out)]
        result = CliRunner().invoke(train_command, arguments)
    finally:
        determinism.configure(False)
    assert result.exit_code == 0, result.output
    resolved = TrainSpec.model_validate(json.loads(RunDirectory(out).config.read_text()))
    assert resolved.deterministic and resolved.loader_workers == 1
