"""Method state and the step's generator survive a checkpoint that moved them: state comes back where the
method keeps it, and a generator state saved on another device type is refused by nothing.

Without a GPU, another dtype stands in for another device: both are what ``Tensor.to`` changes and what a
CPU-side K x K solve cannot mix with its own float64 tensors."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from flatmtl.workers import mtl
from flatmtl.workers.mtl.flat import FlatParams
from flatmtl.workers.mtl.step import GENERATOR_STATES, reseeded, state_on_device
from tests.mtl.models import tiny_problem


def moved(value: Any, dtype: torch.dtype) -> Any:
    """What a checkpoint loader that puts every method tensor on the run's device does, with a dtype for a device."""
    if isinstance(value, Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, dict):
        return {key: moved(item, dtype) for key, item in value.items()}
    return value


def shared_grad(model: torch.nn.Module) -> Tensor:
    return torch.cat([p.grad.flatten() for p in model.shared_parameters()])


@pytest.mark.parametrize(("aggregator", "wrapper"), [("moco", "none"), ("moco", "fmtl"), ("gradvac", "none")])
def test_host_state_returns_to_the_host_after_a_checkpoint_moved_it(aggregator: str, wrapper: str) -> None:
    """MoCo's weights, GradVac's targets (and F-MTL's copy of them) live on the CPU in float64; a checkpoint
    loader that moved them with the rest of the state used to make MoCo's first resumed step fail."""
    model, x, targets = tiny_problem()
    hparams = {"rho_shared": 0.05, "rho_task": 0.05} if wrapper == "fmtl" else {}
    step = mtl.MTLStep.from_model(model, aggregator=aggregator, wrapper=wrapper, wrapper_hparams=hparams, seed=3)
    for _ in range(3):
        model.zero_grad()
        step(lambda: model.task_losses(x, targets))
    saved = step.state_dict()
    resumed = mtl.MTLStep.from_model(model, aggregator=aggregator, wrapper=wrapper, wrapper_hparams=hparams, seed=3)
    resumed.load_state_dict({**moved(saved, torch.float32), "generator": saved["generator"]})
    host_key = {"moco": "weights", "gradvac": "targets"}[aggregator]
    value = getattr(resumed.aggregator, host_key)
    assert (value.device, value.dtype) == (torch.device("cpu"), torch.float64)
    model.zero_grad()
    step(lambda: model.task_losses(x, targets))
    expected = shared_grad(model)
    model.zero_grad()
    resumed(lambda: model.task_losses(x, targets))  # F-MTL's flat copy loads its moved state here
    torch.testing.assert_close(shared_grad(model), expected, rtol=1e-5, atol=1e-7)  # float32-rounded state


def test_a_generator_state_from_another_device_type_reseeds_deterministically() -> None:
    """A CUDA (Philox) state is 16 bytes a CPU generator cannot take, and the reverse; the resumed stream is
    then fixed by the checkpoint, the same on every rank and every retry."""
    model, _, _ = tiny_problem()
    foreign = {"generator": torch.arange(16, dtype=torch.uint8), "generator_device": "cuda"}
    draws = []
    for _ in range(2):
        step = mtl.MTLStep.from_model(model, wrapper="samo", seed=0)
        step.load_state_dict({**step.state_dict(), **foreign})
        draws.append(torch.randn(4, generator=step.generator))
    torch.testing.assert_close(draws[0], draws[1], rtol=0, atol=0)
    expected = torch.randn(4, generator=torch.Generator().manual_seed(reseeded(foreign["generator"])))
    torch.testing.assert_close(draws[0], expected, rtol=0, atol=0)
    same_type = mtl.MTLStep.from_model(model, seed=5)
    state = same_type.state_dict()
    after = torch.randn(3, generator=same_type.generator)
    same_type.load_state_dict(state)
    torch.testing.assert_close(torch.randn(3, generator=same_type.generator), after, rtol=0, atol=0)


def test_a_state_placed_on_the_run_device_keeps_its_generator_states_on_the_cpu() -> None:
    """Torch's generators (CUDA's too) take their states only as CPU byte tensors: a checkpoint loader that moved
    them to the GPU with the methods' tensors made every resumed CUDA step fail in ``load_state_dict``. The meta
    device stands in for the GPU: what moves there moves to any device."""
    model, x, targets = tiny_problem()
    step = mtl.MTLStep.from_model(model, aggregator="moco", wrapper="samo", seed=1)
    for _ in range(2):
        step(lambda: model.task_losses(x, targets))
    state = step.state_dict()
    state["host_generator"] = torch.Generator().manual_seed(2).get_state()  # as a CUDA step saves it
    placed = state_on_device(state, "meta")
    assert placed["aggregator"]["tracked"].device.type == "meta"
    for key in GENERATOR_STATES:
        assert placed[key] is state[key] and (state[key].device.type, state[key].dtype) == ("cpu", torch.uint8)
    resumed = mtl.MTLStep.from_model(model, aggregator="moco", wrapper="samo", seed=1)
    resumed.load_state_dict(state_on_device(step.state_dict(), "cpu"))
    model.zero_grad()
    step(lambda: model.task_losses(x, targets))
    expected = shared_grad(model)
    model.zero_grad()
    resumed(lambda: model.task_losses(x, targets))
    torch.testing.assert_close(shared_grad(model), expected, rtol=0, atol=0)


def test_tasks_without_head_parameters_get_empty_gradients_with_the_shared_ones() -> None:
    """Their [0] gradients are concatenated and all-reduced with the other heads': same device, same dtype."""
    template = torch.empty(3, dtype=torch.float64, device="meta")
    head = FlatParams([], like=template)
    assert (head.flatten([]).device, head.flatten([]).dtype) == (template.device, torch.float64)
    assert head.flatten_batched([], 4).shape == (4, 0) and head.flatten_batched([], 4).device == template.device
    model, x, targets = tiny_problem()
    step = mtl.MTLStep(mtl.ParameterSplit(model.shared_parameters(), [[], *model.task_parameters()[1:]]))
    step(lambda: model.task_losses(x, targets))
    assert (step.heads[0].flatten([]).dtype, step.heads[0].flatten([]).device) == (torch.float64, x.device)
