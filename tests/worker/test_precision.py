"""``precision="bf16"``: forward passes and losses run under bfloat16 autocast on CPU while weights, gradients and
the optimizer stay fp32; the run trains like the fp32 run to bfloat16's precision."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from flatmtl.service.specs.train import TrainSpec
from flatmtl.workers.training import RunDirectory, RunOptions
from flatmtl.workers.training.trainer import RankContext, Trainer

pytestmark = pytest.mark.slow

SPEC: dict[str, Any] = {
    "problem": "multi_digits",
    "problem_options": {"train_size": 64, "test_size": 32},
    "model": "mlp",
    "model_options": {"hidden": [16]},
    "method": {"wrapper": {"name": "samo"}},
    "epochs": 1,
    "batch_size": 16,
    "seed": 2,
}


def run(tmp_path: Path, precision: str) -> tuple[Trainer, set[torch.dtype], set[torch.dtype]]:
    """The trainer after one epoch, the dtypes of every Linear output and of every gradient it saw."""
    folder = RunDirectory(tmp_path / precision)
    folder.create()
    spec = TrainSpec.model_validate({**SPEC, "precision": precision})
    trainer = Trainer(spec, folder, RunOptions(device="cpu", plots=False), RankContext())
    outputs: set[torch.dtype] = set()
    grads: set[torch.dtype] = set()
    for module in trainer.model.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(lambda _m, _i, out: outputs.add(out.dtype))
    for param in trainer.model.parameters():
        param.register_hook(lambda grad: grads.add(grad.dtype))
    trainer.run()
    return trainer, outputs, grads


def test_bf16_autocasts_the_forward_pass_and_keeps_fp32_weights_and_gradients(tmp_path: Path) -> None:
    bf16, bf16_outputs, bf16_grads = run(tmp_path, "bf16")
    fp32, fp32_outputs, _ = run(tmp_path, "fp32")
    assert bf16_outputs == {torch.bfloat16} and fp32_outputs == {torch.float32}
    assert bf16_grads == {torch.float32}
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())
    first_bf16 = bf16.rundir.read_lines(bf16.rundir.step_metrics)[0]["loss"]
    first_fp32 = fp32.rundir.read_lines(fp32.rundir.step_metrics)[0]["loss"]
    assert first_bf16 != first_fp32  # autocast really changed the arithmetic
    assert abs(first_bf16 - first_fp32) <= 2e-2 * abs(first_fp32)  # bfloat16 keeps ~3 significant digits
    final = bf16.history[-1]
    assert all(torch.isfinite(torch.tensor(v)) for k, v in final.items() if k.startswith("test/"))
