"""A NaN loss stops the run at once: FAILED in summary.json naming the step and the task, a specific exception."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor

from flatmtl.workers.problems.multi_image import MultiDigits
from flatmtl.workers.training import NonFiniteLossError, RunDirectory, RunOptions, train
from tests.training.specs import spec

BAD_STEP = 3


@pytest.mark.slow
def test_nan_loss_fails_the_run_naming_step_and_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = MultiDigits.losses
    calls = {"forward": 0}

    def losses(self: MultiDigits, outputs: list[Tensor], targets: list[Tensor]) -> Tensor:
        calls["forward"] += 1  # wrapper "none": one forward per step
        values = original(self, outputs, targets)
        if calls["forward"] == BAD_STEP:
            values = values * torch.tensor([1.0, float("nan")])
        return values

    monkeypatch.setattr(MultiDigits, "losses", losses)
    with pytest.raises(NonFiniteLossError) as caught:
        train(spec(), tmp_path, options=RunOptions(plots=False))
    assert (caught.value.step, caught.value.task, caught.value.epoch) == (BAD_STEP, "bottom_right", 1)
    assert calls["forward"] == BAD_STEP  # nothing ran after the bad step

    run = RunDirectory(tmp_path)
    summary = json.loads(run.summary.read_text())
    assert summary["status"] == "FAILED"
    assert summary["error"]["step"] == BAD_STEP and summary["error"]["task"] == "bottom_right"
    assert "bottom_right" in summary["error"]["message"] and f"step {BAD_STEP}" in summary["error"]["message"]
    assert [line["step"] for line in run.read_lines(run.step_metrics)] == list(range(1, BAD_STEP))
