"""Strict scalars: a spec's numbers and booleans arrive typed, never as strings, and YAML files still type them."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from flatmtl.service.specs.base import load_yaml
from flatmtl.service.specs.submission import JobSubmission
from flatmtl.service.specs.sweep import SweepSpec
from flatmtl.service.specs.train import TrainSpec
from flatmtl.service.validation import FieldProblem, problems
from tests.service.catalogs import CONTEXT

TRAIN: dict[str, Any] = {"problem": "multi_digits"}


def refusal(model: type[Any], document: dict[str, Any]) -> FieldProblem:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(document, context=CONTEXT)
    (found,) = problems(caught.value)
    return found


@pytest.mark.parametrize(
    ("document", "field", "value", "expected"),
    [
        ({**TRAIN, "epochs": "3"}, "epochs", "3", "integer"),
        ({**TRAIN, "epochs": 3.5}, "epochs", 3.5, "integer"),
        ({**TRAIN, "epochs": True}, "epochs", True, "integer"),
        ({**TRAIN, "seed": "0"}, "seed", "0", "integer"),
        ({**TRAIN, "optimizer": {"lr": "0.01"}}, "optimizer.lr", "0.01", "number"),
        ({**TRAIN, "optimizer": {"lr": True}}, "optimizer.lr", True, "number"),
        ({**TRAIN, "optimizer": {"betas": ["0.9", 0.99]}}, "optimizer.betas[0]", "0.9", "number"),
        (
            {**TRAIN, "optimizer": {"name": "sgd", "momentum": 0.9, "nesterov": "true"}},
            "optimizer.nesterov",
            "true",
            "boolean",
        ),
        ({**TRAIN, "optimizer": {"name": "sgd", "momentum": 0.9, "nesterov": 1}}, "optimizer.nesterov", 1, "boolean"),
        ({**TRAIN, "resources": {"cpus": "2"}}, "resources.cpus", "2", "number"),
        ({**TRAIN, "scheduler": {"name": "step", "gamma": "0.5"}}, "scheduler.gamma", "0.5", "number"),
    ],
)
def test_strings_and_booleans_are_not_numbers(document: dict[str, Any], field: str, value: Any, expected: str) -> None:
    problem = refusal(TrainSpec, document)
    assert (problem.field, problem.value) == (field, value)
    assert expected in problem.message


@pytest.mark.parametrize(
    ("hparams", "field", "value", "allowed"),
    [
        ({"name": "sam", "hparams": {"rho": "0.05"}}, "method.wrapper.hparams.rho", "0.05", "float in [0, inf)"),
        ({"name": "sam", "hparams": {"adaptive": "true"}}, "method.wrapper.hparams.adaptive", "true", "true or false"),
        ({"name": "samo", "hparams": {"alpha": True}}, "method.wrapper.hparams.alpha", True, "float in [0, 1]"),
    ],
)
def test_method_hyper_parameters_are_not_coerced_from_strings(
    hparams: dict[str, Any], field: str, value: Any, allowed: str
) -> None:
    problem = refusal(TrainSpec, {**TRAIN, "method": {"wrapper": hparams}})
    assert (problem.field, problem.value, problem.allowed) == (field, value, allowed)


def test_an_integer_hyper_parameter_refuses_its_string() -> None:
    problem = refusal(TrainSpec, {**TRAIN, "method": {"aggregator": {"name": "nash", "hparams": {"iterations": "5"}}}})
    assert (problem.field, problem.value) == ("method.aggregator.hparams.iterations", "5")


def test_submission_and_sweep_fields_are_strict_too() -> None:
    problem = refusal(JobSubmission, {"spec": TRAIN, "priority": "5"})
    assert (problem.field, problem.value) == ("priority", "5") and "integer" in problem.message
    space = {"optimizer.lr": {"type": "uniform", "low": "0.001", "high": 0.1}}
    sweep = {"base": TRAIN, "space": space, "metric": "m", "mode": "min", "search": "random", "num_trials": 2}
    problem = refusal(SweepSpec, sweep)
    assert (problem.field, problem.value) == ("space['optimizer.lr'].low", "0.001")


def test_a_grid_of_strings_is_refused_for_a_number_field() -> None:
    space = {"optimizer.lr": {"type": "grid", "values": [0.01, "0.1"]}}
    problem = refusal(SweepSpec, {"base": TRAIN, "space": space, "metric": "m", "mode": "min"})
    assert problem.field == "space['optimizer.lr']" and problem.value == "0.1"


def test_a_range_over_an_integer_field_is_refused_at_submission() -> None:
    """A uniform range samples fractional values, which an integer field cannot take."""
    space = {"epochs": {"type": "uniform", "low": 1, "high": 5}}
    sweep = {"base": TRAIN, "space": space, "metric": "m", "mode": "min", "search": "random", "num_trials": 2}
    problem = refusal(SweepSpec, sweep)
    assert problem.field == "space.epochs" and "integer" in problem.message


def test_float_fields_take_integers_and_a_dump_reads_back() -> None:
    document = {
        **TRAIN,
        "optimizer": {"lr": 1, "betas": [0, 0.5]},
        "resources": {"cpus": 2},
        "method": {"wrapper": {"name": "sam", "hparams": {"rho": 1}}},
    }
    spec = TrainSpec.model_validate(document, context=CONTEXT)
    assert spec.optimizer.lr == 1.0 and isinstance(spec.optimizer.lr, float)
    assert spec.optimizer.betas == (0.0, 0.5) and all(isinstance(b, float) for b in spec.optimizer.betas)
    assert spec.resources.cpus == 2.0 and isinstance(spec.resources.cpus, float)
    assert spec.method.wrapper.hparams == {"rho": 1.0} and isinstance(spec.method.wrapper.hparams["rho"], float)
    stored = json.loads(json.dumps(spec.model_dump(mode="json")))
    assert TrainSpec.model_validate(stored, context=CONTEXT) == spec
    assert TrainSpec.model_validate(spec.model_dump(), context=CONTEXT) == spec


@pytest.mark.parametrize("number", ["1e-3", "5E-2", "-2.5e+2", "1.0e3", "2E10", "7", "0.25"])
def test_yaml_reads_numbers_as_json_does(number: str) -> None:
    text = f'{{"lr": {number}, "quoted": "{number}", "flag": true}}'
    assert load_yaml(text) == json.loads(text)
    assert load_yaml(f"lr: {number}\nquoted: '{number}'\nflag: true\n") == json.loads(text)


def test_a_yaml_spec_with_exponents_validates_strictly() -> None:
    text = "problem: multi_digits\nepochs: 3\noptimizer: {lr: 1e-3, weight_decay: 5e-4}\n"
    text += "method: {wrapper: {name: sam, hparams: {rho: 5e-2, adaptive: true}}}\n"
    assert yaml.safe_load(text)["optimizer"]["lr"] == "1e-3", "PyYAML alone reads exponents as strings"
    spec = TrainSpec.model_validate(load_yaml(text), context=CONTEXT)
    assert (spec.epochs, spec.optimizer.lr, spec.optimizer.weight_decay) == (3, 0.001, 0.0005)
    assert spec.method.wrapper.hparams == {"rho": 0.05, "adaptive": True}
