"""``train()`` refuses GPUs it cannot have, before the run directory or any rank exists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from flatmtl.workers import engine
from flatmtl.workers.training import local
from flatmtl.workers.training.errors import ConfigError
from tests.training.specs import document


@pytest.mark.parametrize("processes", [1, 2])
def test_gpus_without_cuda_are_refused_naming_the_field_and_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, processes: int
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def no_launch(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a rank was launched")

    monkeypatch.setattr(engine, "launch", no_launch)
    gpus = 0.5 if processes == 1 else 1.0  # several ranks need a whole GPU each (the spec refuses shares)
    spec = document(processes=processes, resources={"cpus": 1, "gpus": gpus})
    with pytest.raises(ConfigError) as refused:
        local.train(spec, tmp_path / "run")
    [problem] = refused.value.problems
    assert (problem.field, problem.value) == ("resources.gpus", gpus)
    assert "resources.gpus" in str(refused.value) and str(gpus) in str(refused.value) and "CUDA" in str(refused.value)
    assert not (tmp_path / "run").exists()


def test_cuda_needs_a_gpu_per_rank_and_auto_never_splits_ranks_over_devices() -> None:
    """``cuda`` with more ranks than GPUs is refused (it used to fall back to gloo on the CPU silently)."""
    with pytest.raises(ConfigError) as refused:
        local.resolve_device("cuda", 2, visible_gpus=1)
    [problem] = refused.value.problems
    assert (problem.field, problem.value) == ("options.device", "cuda")
    assert "2 processes" in problem.message and "1 visible" in problem.message
    with pytest.raises(ConfigError, match="no CUDA device"):
        local.resolve_device("cuda", 1, visible_gpus=0)
    assert local.resolve_device("cuda", 2, visible_gpus=2) == torch.device("cuda")
    assert local.resolve_device("auto", 2, visible_gpus=1) == torch.device("cpu")
    assert local.resolve_device("auto", 1, visible_gpus=1) == torch.device("cuda")
    assert local.resolve_device("cpu", 4, visible_gpus=8) == torch.device("cpu")


def test_nccl_is_refused_without_a_gpu_per_rank_before_any_rank_starts() -> None:
    with pytest.raises(ValueError, match="needs 2 GPUs, 1 visible"):
        engine.check_backend("nccl", 2, visible_gpus=1)
    engine.check_backend("nccl", 2, visible_gpus=2)
    engine.check_backend("gloo", 8, visible_gpus=0)
    visible = torch.cuda.device_count()
    with pytest.raises(ValueError, match=f"needs {visible + 1} GPUs, {visible} visible"):
        engine.launch(print, visible + 1, backend="nccl")
