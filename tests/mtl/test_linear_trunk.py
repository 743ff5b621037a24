"""Per-task gradients of a linear trunk by batched products equal K sequential backward passes.

The reference is the definition: row k of the [K, P] result is ``autograd.grad(<source, rows[k]>)``
w.r.t. the shared parameters, one pass per row, zeros for parameters the source does not reach.
Trunks the products do not cover must give no plan and leave the engine on its vmapped backward.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from flatmtl.workers import mtl
from flatmtl.workers.mtl import linear_trunk
from flatmtl.workers.mtl.flat import FlatParams
from flatmtl.workers.mtl.task_gradients import TaskGradientEngine, batched_backward
from flatmtl.workers.problems.models.encoders import MLPEncoder
from flatmtl.workers.problems.models.hps import HardSharing

NUM_ROWS = 5


def sequential_reference(source: Tensor, rows: Tensor, shared: FlatParams) -> Tensor:
    grads = []
    for row in rows:
        parts = torch.autograd.grad(source, shared.params, row, retain_graph=True, allow_unused=True)
        grads.append(shared.flatten(parts))
    return torch.stack(grads)


def trunk_output(trunk: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, FlatParams]:
    source = trunk(x)
    rows = torch.randn(NUM_ROWS, *source.shape, dtype=torch.float64)
    return source, rows, FlatParams(list(trunk.parameters()))


class Functional(nn.Module):
    """The same chain written with functional calls and a bias-free layer (an mm node, no addmm)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(6, 9)
        self.second = nn.Linear(9, 4, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.second(nn.functional.gelu(self.first(x))))


class Sequence3d(nn.Module):
    """Linear layers on [B, T, features] (view nodes around each product), then a flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 5), nn.SiLU(), nn.Linear(5, 3), nn.Flatten(), nn.Linear(3 * 4, 7))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x[:, None, :] * torch.arange(1.0, 5.0, dtype=x.dtype)[:, None])


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(6, 6)
        self.second = nn.Linear(6, 6)

    def forward(self, x: Tensor) -> Tensor:
        hidden = torch.relu(self.first(x))
        return hidden + self.second(hidden)


class Tied(nn.Module):
    """One layer applied twice: its weight gets two contributions."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(6, 6)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(torch.relu(self.layer(x)))


ACTIVATIONS = [nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid]
SUPPORTED: dict[str, Callable[[], nn.Module]] = {
    **{
        f"mlp_{a.__name__}": (lambda a=a: nn.Sequential(nn.Linear(6, 8), a(), nn.Linear(8, 4), a()))
        for a in ACTIVATIONS
    },
    "encoder": lambda: MLPEncoder((6,), hidden=(8, 5)),
    "functional": Functional,
    "sequence_3d": Sequence3d,
    "linear_output": lambda: nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)),
    "one_output": lambda: nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1)),
}
UNSUPPORTED: dict[str, Callable[[], nn.Module]] = {
    "layer_norm": lambda: nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.ReLU()),
    "batch_norm": lambda: nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU()),
    "convolution": lambda: nn.Sequential(nn.Unflatten(1, (1, 6)), nn.Conv1d(1, 2, 3), nn.Flatten(), nn.ReLU()),
    "residual": Residual,
    "tied": Tied,
}


@pytest.mark.parametrize("batch", [10, 1])
@pytest.mark.parametrize("name", sorted(SUPPORTED))
def test_products_equal_sequential_backwards(name: str, batch: int) -> None:
    torch.manual_seed(0)
    source, rows, shared = trunk_output(SUPPORTED[name]().double(), torch.randn(batch, 6, dtype=torch.float64))
    plan = linear_trunk.plan(source, shared)
    assert plan is not None
    expected = sequential_reference(source, rows, shared)
    torch.testing.assert_close(linear_trunk.task_gradients(plan, rows, shared), expected, rtol=1e-10, atol=1e-12)


def test_untrained_and_unreached_parameters() -> None:
    """A frozen first weight (no saved input, no columns claimed) and a shared parameter the source
    never reads (its columns zero, as ``allow_unused`` gives)."""
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)).double()
    trunk[0].weight.requires_grad_(False)
    unused = nn.Parameter(torch.randn(3, dtype=torch.float64))
    source = trunk(torch.randn(10, 6, dtype=torch.float64))
    rows = torch.randn(NUM_ROWS, *source.shape, dtype=torch.float64)
    shared = FlatParams([trunk[0].bias, unused, trunk[2].weight, trunk[2].bias])
    plan = linear_trunk.plan(source, shared)
    assert plan is not None
    result = linear_trunk.task_gradients(plan, rows, shared)
    torch.testing.assert_close(result, sequential_reference(source, rows, shared), rtol=1e-10, atol=1e-12)
    assert (result[:, 8:11] == 0).all()


def test_parameters_outside_the_shared_set_give_no_plan() -> None:
    trunk = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)).double()
    source = trunk(torch.randn(10, 6, dtype=torch.float64))
    assert linear_trunk.plan(source, FlatParams(list(trunk[2].parameters()))) is None


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_unsupported_trunks_fall_back_to_the_vmapped_backward(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    source, rows, shared = trunk_output(UNSUPPORTED[name]().double(), torch.randn(10, 6, dtype=torch.float64))
    assert linear_trunk.plan(source, shared) is None
    products = []
    monkeypatch.setattr(linear_trunk, "task_gradients", lambda *args: products.append(args))
    result = TaskGradientEngine("batched").flat_backward([source], [rows], shared, retain_graph=True)
    assert not products
    torch.testing.assert_close(result, sequential_reference(source, rows, shared), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("mode", "linear", "takes_products"), [
    ("auto", True, True), ("batched", True, True), ("batched", False, False), ("sequential", True, False)
])  # fmt: skip
def test_the_oracle_takes_the_products_on_a_declared_mlp(
    mode: str, linear: bool, takes_products: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HardSharing on an MLP encoder: the heads-cut per-task gradients along every engine setting
    equal K sequential backwards of the whole graph; the products run only in the batched modes."""
    torch.manual_seed(0)
    model = HardSharing(MLPEncoder((6,), hidden=(8, 5)), [nn.Linear(5, 1) for _ in range(4)]).double()
    x = torch.randn(12, 6, dtype=torch.float64)
    targets = torch.randn(12, 4, dtype=torch.float64)

    def losses() -> Tensor:
        outputs = torch.cat(model(x), dim=1)
        return ((outputs - targets) ** 2).mean(dim=0)

    calls = []
    original = linear_trunk.task_gradients
    monkeypatch.setattr(linear_trunk, "task_gradients", lambda *args: calls.append(1) or original(*args))
    step = mtl.MTLStep.from_model(model, gradient_mode=mode)  # type: ignore[arg-type]
    step.gradient_engine.linear_trunk = linear
    oracle = step.oracle(losses)
    result = oracle.task_gradients(oracle.losses())
    assert step.trunk is not None and step.trunk.active
    assert bool(calls) == takes_products
    shared = FlatParams(model.shared_parameters())
    expected = torch.stack(
        [shared.flatten(torch.autograd.grad(loss, shared.params, retain_graph=True)) for loss in losses()]
    )
    torch.testing.assert_close(result.shared, expected, rtol=1e-10, atol=1e-12)


def assert_within_bf16(result: Tensor, expected: Tensor) -> None:
    """bfloat16 keeps 8 significant bits: the paths may round the same sums at different points."""
    torch.testing.assert_close(result, expected, rtol=2e-2, atol=2e-2 * float(expected.abs().max()))


@pytest.mark.parametrize("name", sorted(SUPPORTED))
def test_under_bf16_autocast_the_products_equal_autograds_bf16_backward(name: str) -> None:
    """Autocast casts every weight into bfloat16 on its way into its product: the plan sees through the
    casts, and its float32 [K, P] matches both autograd backwards of the same bfloat16 graph."""
    torch.manual_seed(0)
    trunk = SUPPORTED[name]()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        source = trunk(torch.randn(10, 6))
    assert source.dtype == torch.bfloat16
    rows = torch.randn(NUM_ROWS, *source.shape, dtype=torch.bfloat16)
    shared = FlatParams(list(trunk.parameters()))
    plan = linear_trunk.plan(source, shared)
    assert plan is not None
    result = linear_trunk.task_gradients(plan, rows, shared)
    assert result.dtype == torch.float32
    vmapped = shared.flatten_batched(batched_backward([source], [rows], shared.params, retain_graph=True), NUM_ROWS)
    assert_within_bf16(result, vmapped)
    assert_within_bf16(result, sequential_reference(source, rows, shared))


def test_under_bf16_autocast_the_oracle_takes_the_products(monkeypatch: pytest.MonkeyPatch) -> None:
    """A step whose losses are computed under autocast (as ``precision: bf16`` trains) takes the products, not
    the vmapped backward, and its per-task gradients are the vmapped ones to bfloat16's precision."""
    torch.manual_seed(0)
    model = HardSharing(MLPEncoder((6,), hidden=(8, 5)), [nn.Linear(5, 1) for _ in range(4)])
    x, targets = torch.randn(12, 6), torch.randn(12, 4)

    def losses() -> Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs = torch.cat(model(x), dim=1)
        return ((outputs.float() - targets) ** 2).mean(dim=0)

    calls: list[bool] = []
    original = linear_trunk.task_gradients
    monkeypatch.setattr(linear_trunk, "task_gradients", lambda *args: calls.append(True) or original(*args))
    results = {}
    for linear in (True, False):
        step = mtl.MTLStep.from_model(model, gradient_mode="batched")
        step.gradient_engine.linear_trunk = linear
        oracle = step.oracle(losses)
        results[linear] = oracle.task_gradients(oracle.losses()).shared
        assert calls == [True]
    assert results[True].dtype == torch.float32
    assert_within_bf16(results[True], results[False])
