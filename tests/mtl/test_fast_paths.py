"""Per-task gradients only where the method needs them: an averaging aggregator takes one backward of the
weighted sum, and per-task gradients with their Gram come only on diagnostics steps (or every step for a
weighting that observes the Gram)."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from flatmtl.workers import mtl
from flatmtl.workers.problems.models.encoders import LeNetEncoder
from flatmtl.workers.problems.models.hps import HardSharing
from tests.mtl.models import tiny_problem


def grads_after_steps(
    weighting: str, diagnostics_every: int, steps: int = 2
) -> tuple[list[torch.Tensor], mtl.StepRecord]:
    """The .grad of every parameter (model, then the weighting's) after the last of ``steps`` calls, with
    the parameters left where they were (no optimizer), so every call sees the same point."""
    model, x, targets = tiny_problem(num_tasks=4)
    step = mtl.MTLStep.from_model(model, weighting=weighting, seed=3, diagnostics_every=diagnostics_every)
    for _ in range(steps):
        for param in [*model.parameters(), *step.parameters()]:
            param.grad = None
        record = step(lambda: model.task_losses(x, targets).abs() + 0.1)
    return [p.grad.clone() for p in [*model.parameters(), *step.parameters()]], record


@pytest.mark.parametrize("weighting", ["ew", "uw", "imtl_l", "rlw", "famo", "gls", "si", "dwa"])
def test_one_backward_of_the_weighted_sum_equals_the_per_task_mean(weighting: str) -> None:
    per_task, per_task_record = grads_after_steps(weighting, diagnostics_every=1)
    one_backward, record = grads_after_steps(weighting, diagnostics_every=2)
    assert per_task_record.backward_passes == 4 and per_task_record.gram is not None
    assert record.backward_passes == 1 and record.gram is None
    for a, b in zip(one_backward, per_task, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("weighting", [method.name for method in mtl.methods("weighting") if method.name != "gradnorm"])
def test_the_public_backward_gives_the_engine_calls_gradients(weighting: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where torch lacks the engine call, or a parameter overrides torch functions, the one backward goes through
    ``backward(inputs=...)`` of the weighted losses' sum: the same gradients."""
    from flatmtl.workers.mtl import oracle

    by_engine, _ = grads_after_steps(weighting, diagnostics_every=2)
    monkeypatch.setattr(oracle, "_engine_backward", None)
    by_backward, record = grads_after_steps(weighting, diagnostics_every=2)
    assert record.backward_passes == 1
    for a, b in zip(by_backward, by_engine, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_backward_gives_the_mean_task_gradient_and_each_head_its_own(dtype: torch.dtype) -> None:
    """By the definitions, at K=3 (1/K inexact in binary); float32 gradients are scaled and checked in one fused
    pass, float64 ones divided exactly."""
    model, x, targets = tiny_problem(num_tasks=3)
    model, x, targets = model.to(dtype), x.to(dtype), targets.to(dtype)
    step = mtl.MTLStep.from_model(model, diagnostics_every=2)
    step(lambda: model.task_losses(x, targets))
    record = step(lambda: model.task_losses(x, targets))
    assert record.backward_passes == 1
    losses = model.task_losses(x, targets)
    per_task = [torch.autograd.grad(losses[k], model.shared_parameters(), retain_graph=True) for k in range(3)]
    tolerance = {"rtol": 0, "atol": 1e-12} if dtype == torch.float64 else {}
    for param, *rows in zip(model.shared_parameters(), *per_task, strict=True):
        torch.testing.assert_close(param.grad, torch.stack(rows).mean(dim=0), **tolerance)
    for k, head in enumerate(model.task_parameters()):
        own = torch.autograd.grad(losses[k], head, retain_graph=True)
        for param, expected in zip(head, own, strict=True):
            torch.testing.assert_close(param.grad, expected, **tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_non_finite_gradient_of_finite_losses_fails_the_one_backward_step(dtype: torch.dtype) -> None:
    model, x, targets = tiny_problem()
    model, x, targets = model.to(dtype), x.to(dtype), targets.to(dtype)
    step = mtl.MTLStep.from_model(model, diagnostics_every=2)
    step(lambda: model.task_losses(x, targets))
    weight = model.shared_parameters()[0]
    with pytest.raises(mtl.MethodError, match=r"mean: update contain NaN or inf \(first at index \[0\]\)"):
        step(lambda: model.task_losses(x, targets) + torch.sqrt(weight.sum() * 0))  # adds 0; its gradient is NaN
    if dtype == torch.float32:  # the fused pass's flag, reused by the next steps, is clear again
        assert step.one_backward.flag_and_scale is not None
        assert float(step.one_backward.flag_and_scale[0]) == 0


def test_diagnostics_steps_record_the_per_task_gram() -> None:
    model, x, targets = tiny_problem(num_tasks=3)
    step = mtl.MTLStep.from_model(model, diagnostics_every=3)
    grams = [step(lambda: model.task_losses(x, targets)).gram for _ in range(7)]
    assert [g is not None for g in grams] == [True, False, False, True, False, False, True]
    losses = model.task_losses(x, targets)
    rows = [
        torch.cat([g.flatten() for g in torch.autograd.grad(losses[k], model.shared_parameters(), retain_graph=True)])
        for k in range(3)
    ]
    jacobian = torch.stack(rows)
    for gram in grams[::3]:
        torch.testing.assert_close(gram, jacobian @ jacobian.T, rtol=0, atol=1e-12)


def test_a_weighting_that_observes_the_gram_gets_per_task_gradients_every_step() -> None:
    _, record = grads_after_steps("gradnorm", diagnostics_every=1000)
    assert record.gram is not None and record.backward_passes == 3 + 1


def test_a_non_gram_aggregator_computes_no_gram_outside_diagnostics_steps() -> None:
    model, x, targets = tiny_problem()
    step = mtl.MTLStep.from_model(model, aggregator="graddrop", diagnostics_every=2)
    records = [step(lambda: model.task_losses(x, targets)) for _ in range(2)]
    assert records[0].gram is not None and records[1].gram is None


@pytest.mark.parametrize("every", [0, -1, 1.5, True])
def test_diagnostics_every_must_be_a_positive_integer(every: object) -> None:
    model, _, _ = tiny_problem()
    with pytest.raises(mtl.MethodError, match=r"diagnostics_every=.* allowed: an integer >= 1"):
        mtl.MTLStep.from_model(model, diagnostics_every=every)


@pytest.mark.parametrize("aggregator", ["mean", "upgrad", "graddrop", "moco", "pcgrad"])
def test_non_finite_gradients_are_named_from_the_cheap_check(aggregator: str) -> None:
    grads = torch.randn(3, 50, dtype=torch.float64)
    grads[2, 17] = math.inf
    method = mtl.aggregator(aggregator)
    with pytest.raises(mtl.MethodError, match=r"gradients contain NaN or inf \(first at index \[2, 17\]\)"):
        method(grads, losses=torch.ones(3, dtype=torch.float64))
    if aggregator == "moco":
        assert method.state_dict()["tracked"] is None  # the state did not move


def representation_problem(
    declare_heads: bool,
) -> tuple[mtl.ParameterSplit, nn.Module, Callable[[], tuple[Tensor, Tensor]]]:
    from tests.mtl.test_trunk import DeclaredHeads

    torch.manual_seed(0)
    model = DeclaredHeads(num_tasks=3, batch_norm=False).double()
    x = torch.randn(16, 6, dtype=torch.float64)
    targets = torch.randn(16, 3, dtype=torch.float64)
    split = mtl.ParameterSplit.from_model(model)
    if not declare_heads:
        split.task_heads = None
    return split, model, lambda: model.losses_and_representation(x, targets)


def per_task_representation_gradients(
    model: nn.Module, closure: Callable[[], tuple[Tensor, Tensor]]
) -> tuple[Tensor, Tensor, Tensor, list[tuple[Tensor, ...]]]:
    """By the definitions: each task's gradient w.r.t. the representation and w.r.t. the shared parameters."""
    losses, features = closure()
    shared = model.shared_parameters()
    rep = torch.stack([torch.autograd.grad(losses[k], features, retain_graph=True)[0] for k in range(3)])
    params = torch.stack(
        [torch.cat([g.flatten() for g in torch.autograd.grad(losses[k], shared, retain_graph=True)]) for k in range(3)]
    )
    heads = [torch.autograd.grad(losses[k], model.task_parameters()[k], retain_graph=True) for k in range(3)]
    return features.detach(), rep, params, heads


@pytest.mark.parametrize("declare_heads", [True, False])
def test_mgda_ub_takes_mgda_weights_of_the_representation_gram_through_one_trunk_backward(declare_heads: bool) -> None:
    split, model, closure = representation_problem(declare_heads)
    step = mtl.MTLStep(split, aggregator="mgda_ub", diagnostics_every=2)
    step(closure)
    model.zero_grad()
    record = step(closure)  # not a diagnostics step: no parameter Gram
    assert record.gram is None
    _, rep, params, heads = per_task_representation_gradients(model, closure)
    flat_rep = rep.reshape(3, -1)
    weights = mtl.aggregator("mgda").weights(flat_rep @ flat_rep.T)
    got = torch.cat([p.grad.flatten() for p in model.shared_parameters()])
    torch.testing.assert_close(got, weights @ params, rtol=0, atol=1e-10)
    for k, head in enumerate(model.task_parameters()):
        for param, expected in zip(head, heads[k], strict=True):
            torch.testing.assert_close(param.grad, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("leak", [0.0, 0.3])
def test_graddrop_drops_signs_at_the_representation_as_the_paper_defines(leak: float) -> None:
    split, model, closure = representation_problem(True)
    step = mtl.MTLStep(split, aggregator="graddrop", aggregator_hparams={"leak": leak}, seed=5)
    generator = torch.Generator().manual_seed(5)  # the step's generator, replayed
    record = step(closure)
    assert record.gram is not None  # the first step is a diagnostics step
    features, rep, _, _ = per_task_representation_gradients(model, closure)
    signals = (features.sign() * rep).sum(dim=1)  # [K, features]: batch sums of sign(A) * dL_k/dA
    seed = int(torch.randint(2**62, (1,), generator=generator))
    uniform = torch.rand(signals.shape[1], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    purity = 0.5 * (1 + signals.sum(0) / signals.abs().sum(0))
    masks = ((purity > uniform) & (signals > 0)) | ((purity < uniform) & (signals < 0))
    combined = ((leak + (1 - leak) * masks.double()).unsqueeze(1) * rep).sum(dim=0)
    _, features_again = closure()
    expected = torch.autograd.grad(features_again, model.shared_parameters(), combined)
    for param, grad in zip(model.shared_parameters(), expected, strict=True):
        torch.testing.assert_close(param.grad, grad, rtol=0, atol=1e-12)


def test_auto_gradient_mode_measures_both_paths_and_records_its_choice() -> None:
    model, x, targets = tiny_problem()
    step = mtl.MTLStep.from_model(model, aggregator="upgrad", gradient_mode="auto")
    records = [step(lambda: model.task_losses(x, targets)) for _ in range(3)]
    choice = records[1].extras  # the first call warms the batched path; the second times both
    assert records[0].extras == {} and records[2].extras == {}
    assert choice["gradient_mode/batched_seconds"] > 0 and choice["gradient_mode/sequential_seconds"] > 0
    faster_batched = choice["gradient_mode/batched_seconds"] <= choice["gradient_mode/sequential_seconds"]
    assert choice["gradient_mode/batched"] == float(faster_batched)
    assert step.gradient_engine.mode == ("batched" if faster_batched else "sequential")


def path_counter(calls: dict[str, int]) -> Callable[[str], Callable[[bool], str]]:
    """Stand-ins for the gradient engine's two paths that count their calls in ``calls`` and name themselves."""

    def counted(path: str) -> Callable[[bool], str]:
        def run(keep: bool) -> str:
            calls[path] += 1
            return path

        return run

    return counted


def test_auto_gradient_mode_chooses_without_timing_where_runs_must_repeat_bit_for_bit() -> None:
    """Two runs of one deterministic spec could time the paths differently and then round differently: with
    deterministic algorithms on, ``auto`` keeps the batched path and never runs the sequential one to time it."""
    from flatmtl.workers.mtl.task_gradients import TaskGradientEngine

    calls = {"batched": 0, "sequential": 0}
    counted = path_counter(calls)
    model, x, targets = tiny_problem()
    engine = TaskGradientEngine("auto")
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        losses = model.task_losses(x, targets)
        results = [engine._run(counted("batched"), counted("sequential"), False, [losses], 3) for _ in range(3)]
    finally:
        torch.use_deterministic_algorithms(False)
    assert results == ["batched"] * 3 and calls == {"batched": 3, "sequential": 0}
    assert engine.mode == "batched" and engine.choice["gradient_mode/by_rule"] == 1.0


def test_auto_mode_rides_out_an_out_of_memory_batched_backward() -> None:
    """K gradients at once may not fit where K sequential ones do: that call goes sequential, and only repeated
    failures settle on sequential for good (an operator without a batching rule still does at once)."""
    from flatmtl.workers.mtl.task_gradients import OUT_OF_MEMORY_LIMIT, TaskGradientEngine

    engine = TaskGradientEngine("auto")

    def batched(keep: bool) -> str:
        raise torch.OutOfMemoryError("CUDA out of memory")

    for _ in range(OUT_OF_MEMORY_LIMIT - 1):
        assert engine._run(batched, lambda keep: "sequential", False, None, 2) == "sequential"
        assert engine.mode == "auto"
    engine._run(batched, lambda keep: "sequential", False, None, 2)
    assert engine.mode == "sequential"


def test_a_restored_step_keeps_the_path_auto_chose() -> None:
    model, x, targets = tiny_problem()
    step = mtl.MTLStep.from_model(model, aggregator="upgrad")
    for _ in range(2):
        step(lambda: model.task_losses(x, targets))
    restored = mtl.MTLStep.from_model(model, aggregator="upgrad")
    restored.load_state_dict(step.state_dict())
    assert restored.gradient_engine.mode == step.gradient_engine.mode != "auto"
    assert restored(lambda: model.task_losses(x, targets)).extras == {}  # no second measurement, no second record


def conv_problem(num_tasks: int) -> tuple[HardSharing, Callable[[], Tensor]]:
    """A small LeNet with declared heads, whose per-task gradients go back through two convolutions."""
    torch.manual_seed(0)
    model = HardSharing(
        LeNetEncoder((1, 12, 12), channels=(2, 3), features=4), [nn.Linear(4, 1) for _ in range(num_tasks)]
    )
    x = torch.randn(8, 1, 12, 12)
    targets = torch.randn(8, num_tasks)
    return model, lambda: ((torch.cat(model(x), dim=1) - targets) ** 2).mean(dim=0)


def test_auto_takes_sequential_backwards_through_a_cpu_convolution_without_trying_the_batched_path() -> None:
    from flatmtl.workers.mtl.task_gradients import CONVOLUTION_RULE_MAX_TASKS, TaskGradientEngine

    model, closure = conv_problem(3)
    calls = {"batched": 0, "sequential": 0}
    counted = path_counter(calls)
    engine = TaskGradientEngine("auto")
    for _ in range(3):
        engine._run(counted("batched"), counted("sequential"), False, [closure()], 3)
    assert calls == {"batched": 0, "sequential": 3} and engine.mode == "sequential"
    assert engine.choice["gradient_mode/by_rule"] == 1.0 and engine.choice["gradient_mode/batched"] == 0.0
    for outputs, rows in (([closure()], CONVOLUTION_RULE_MAX_TASKS + 1), ([model.heads[0](torch.randn(2, 4))], 3)):
        engine = TaskGradientEngine("auto")  # beyond the rule's K, or without a convolution: measured
        engine._run(counted("batched"), counted("sequential"), False, outputs, rows)
        assert calls["batched"] == 1 and engine.mode == "auto"
        calls["batched"] = 0

    step = mtl.MTLStep.from_model(model, aggregator="upgrad", gradient_mode="auto")
    sequential = mtl.MTLStep.from_model(model, aggregator="upgrad", gradient_mode="sequential")
    record = step(closure)
    assert record.extras["gradient_mode/by_rule"] == 1.0 and step.gradient_engine.mode == "sequential"
    got = [p.grad.clone() for p in model.parameters()]
    sequential(closure)
    for a, b in zip(got, model.parameters(), strict=True):
        torch.testing.assert_close(a, b.grad, rtol=0, atol=0)


def test_sequential_backward_of_given_output_gradients_is_autograds_bit_for_bit() -> None:
    """Each row's gradient comes from a scalar that hands the row to the outputs, and equals autograd's backward
    of the outputs with that row as their output gradient, per parameter and as the row of one [K, P] matrix (a
    parameter the outputs do not reach gets zeros)."""
    from flatmtl.workers.mtl.flat import FlatParams
    from flatmtl.workers.mtl.task_gradients import sequential_backward, sequential_flat_backward

    torch.manual_seed(0)
    layer, unused = nn.Linear(5, 4), nn.Parameter(torch.randn(3))
    x = torch.randn(7, 5)
    outputs = [torch.tanh(layer(x)), layer(x).sum(0)]
    rows = [torch.randn(3, 7, 4), torch.randn(3, 4)]
    params = [*layer.parameters(), unused]
    got = sequential_backward(outputs, rows, params, retain_graph=True)
    flat = sequential_flat_backward(outputs, rows, FlatParams(params), retain_graph=True)
    for row in range(3):
        expected = torch.autograd.grad(outputs, params, [r[row] for r in rows], retain_graph=True, allow_unused=True)
        expected = [torch.zeros_like(p) if g is None else g for g, p in zip(expected, params, strict=True)]
        for column, grad in zip(got, expected, strict=True):
            torch.testing.assert_close(column[row], grad, rtol=0, atol=0)
        torch.testing.assert_close(flat[row], torch.cat([g.flatten() for g in expected]), rtol=0, atol=0)


@pytest.mark.slow
def test_per_task_gradients_leave_sympy_unimported() -> None:
    """autograd's check of given output gradients imports sympy (tens of MiB resident, for good) the first time it
    runs: the convolution rule's sequential backwards, the linear trunk's products and per-task SAM points give
    none, so a fresh process taking them never pays it."""
    script = """
import sys
import torch
from torch import nn
from flatmtl.workers import mtl
from flatmtl.workers.problems.models.encoders import LeNetEncoder, MLPEncoder
from flatmtl.workers.problems.models.hps import HardSharing
for encoder in (LeNetEncoder((1, 12, 12), channels=(2, 3), features=4), MLPEncoder((5,), (6, 4))):
    model = HardSharing(encoder, [nn.Linear(4, 1) for _ in range(3)])
    x = torch.randn(8, *((1, 12, 12) if isinstance(encoder, LeNetEncoder) else (5,)))
    for wrapper in ("none", "fmtl", "sam"):
        step = mtl.MTLStep.from_model(model, aggregator="upgrad", wrapper=wrapper)
        for _ in range(3):
            step(lambda: torch.cat(model(x), dim=1).pow(2).mean(dim=0))
print("sympy" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "False"
