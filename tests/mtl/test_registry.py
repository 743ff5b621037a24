"""Methods are chosen by name with validated hyper-parameters; bad input says what is allowed."""

from __future__ import annotations

import math

import pytest
import torch

from flatmtl.workers import mtl
from flatmtl.workers.mtl.errors import MethodError


def test_every_kind_is_populated_and_described() -> None:
    for kind in ("weighting", "aggregator", "wrapper"):
        listed = mtl.methods(kind)
        assert listed, kind
        for method in listed:
            described = method.describe()
            assert described["description"] and described["scale"], method.name
            for hp in method.hparams:
                built = mtl.spec(kind, method.name).resolve()
                assert built[hp.name] == hp.validate(method.name, hp.default)


def test_unknown_name_lists_the_allowed_names() -> None:
    with pytest.raises(MethodError, match=r"unknown aggregator 'nope'; allowed: .*mean"):
        mtl.aggregator("nope")


def test_unknown_hyper_parameter_names_the_allowed_ones() -> None:
    with pytest.raises(MethodError, match=r"no hyper-parameter 'radius'; allowed: rho"):
        mtl.wrapper("sam", radius=0.1)


@pytest.mark.parametrize("value", [-0.1, math.nan, math.inf, "big", True])
def test_out_of_range_rho_names_parameter_value_and_range(value: object) -> None:
    with pytest.raises(MethodError, match=r"sam\.rho=.* allowed: float in \[0, inf\)"):
        mtl.wrapper("sam", rho=value)


def test_aggregator_rejects_bad_gradients() -> None:
    mean = mtl.aggregator("mean")
    with pytest.raises(MethodError, match=r"\[K, P\] matrix"):
        mean(torch.ones(3))
    bad = torch.ones(2, 4)
    bad[1, 2] = math.nan
    with pytest.raises(MethodError, match=r"NaN or inf .*index \[1, 2\]"):
        mean(bad)
    with pytest.raises(MethodError, match=r"losses must have shape \[2\]"):
        mean(torch.ones(2, 4), losses=torch.ones(3))


def test_step_rejects_loss_count_mismatch() -> None:
    from tests.mtl.models import tiny_problem

    model, x, targets = tiny_problem(num_tasks=3)
    step = mtl.MTLStep.from_model(model)
    with pytest.raises(MethodError, match=r"must return 3 per-task losses, got shape \(2,\)"):
        step(lambda: model.task_losses(x, targets)[:2])


def test_step_rejects_non_finite_losses_naming_them() -> None:
    from tests.mtl.models import tiny_problem

    model, x, targets = tiny_problem(num_tasks=3)
    step = mtl.MTLStep.from_model(model)
    with pytest.raises(MethodError, match=r"losses contain NaN or inf"):
        step(lambda: model.task_losses(x, targets) * torch.tensor([1.0, math.nan, 1.0], dtype=torch.float64))
