"""``flatmtl worker`` and ``flatmtl demo service`` as commands: their sweeps are valid specs, bad options fail."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from flatmtl.service.specs.sweep import SweepSpec
from flatmtl.workers.worker.cli import commands, demo_commands, demo_service_command, worker_command
from flatmtl.workers.worker.service_demo import RADII, ServiceDemo


@pytest.mark.parametrize("wrapper", sorted(RADII))
def test_the_demo_sweeps_rho_by_alpha_with_every_pair_a_trial(wrapper: str, tmp_path: Path) -> None:
    demo = ServiceDemo(out=tmp_path, wrapper=wrapper, rhos=[0.001, 0.01, 0.1], alphas=[0.25, 0.75])
    sweep = SweepSpec.model_validate(demo.sweep())
    assert sweep.trial_count() == 6 and sweep.base.method.wrapper.name == wrapper
    first, second = RADII[wrapper]
    assert set(sweep.space) == {f"method.wrapper.hparams.{first}", f"method.wrapper.hparams.{second}"}


def test_bad_demo_options_name_the_option(tmp_path: Path) -> None:
    result = CliRunner().invoke(demo_service_command, ["--out", str(tmp_path), "--rho", "0.1,abc"])
    assert result.exit_code == 2 and "--rho" in result.output and "abc" in result.output
    result = CliRunner().invoke(demo_service_command, ["--out", str(tmp_path), "--alpha", "-1"])
    assert result.exit_code == 2 and "--alpha" in result.output
    assert not (tmp_path / "flatmtl.db").exists()  # refused before anything started


def test_the_commands_are_exported_for_the_flatmtl_groups() -> None:
    assert [c.name for c in commands] == ["worker"] and [c.name for c in demo_commands] == ["service"]
    result = CliRunner().invoke(worker_command, ["--help"])
    assert result.exit_code == 0 and "--max-jobs" in result.output and "--job-timeout" in result.output
