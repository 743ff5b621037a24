"""Job specs: what is accepted, and that every refusal names the field path, the value and what is allowed."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from flatmtl.service.specs.submission import JobSubmission
from flatmtl.service.specs.sweep import SweepSpec
from flatmtl.service.specs.train import TrainSpec
from flatmtl.service.validation import FieldProblem, problems
from tests.service.catalogs import CONTEXT


def train(**fields: Any) -> dict[str, Any]:
    return {"problem": "multi_digits", **fields}


def sweep(space: dict[str, Any], **fields: Any) -> dict[str, Any]:
    base = train(method={"wrapper": {"name": "fmtl", "hparams": {"rho": 0.05}}})
    return {"base": base, "space": space, "metric": "delta_m", "mode": "min", **fields}


def refusal(model: type[Any], document: dict[str, Any]) -> FieldProblem:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(document, context=CONTEXT)
    found = problems(caught.value)
    assert len(found) == 1, found
    return found[0]


def test_defaults_fill_a_minimal_train_spec() -> None:
    spec = TrainSpec.model_validate(train(), context=CONTEXT)
    assert (spec.method.weighting.name, spec.method.aggregator.name, spec.method.wrapper.name) == ("ew", "mean", "none")
    assert (spec.optimizer.name, spec.sharding, spec.processes) == ("adam", "none", 1)


def test_method_shorthand_and_int_coercion_follow_the_catalog() -> None:
    spec = TrainSpec.model_validate(
        train(method={"aggregator": {"name": "nash", "hparams": {"iterations": 5.0}}, "wrapper": "sam"}),
        context=CONTEXT,
    )
    assert spec.method.wrapper.name == "sam"
    assert spec.method.aggregator.hparams == {"iterations": 5} and isinstance(
        spec.method.aggregator.hparams["iterations"], int
    )


@pytest.mark.parametrize(
    ("method", "field", "value", "allowed"),
    [
        ({"wrapper": "flat-sam"}, "method.wrapper.name", "flat-sam", "fmtl, none, sam, samo"),
        (
            {"wrapper": {"name": "fmtl", "hparams": {"rho": -0.1}}},
            "method.wrapper.hparams.rho",
            -0.1,
            "float in [0, inf)",
        ),
        (
            {"wrapper": {"name": "samo", "hparams": {"alpha": 1.5}}},
            "method.wrapper.hparams.alpha",
            1.5,
            "float in [0, 1]",
        ),
        (
            {"wrapper": {"name": "samo", "hparams": {"alpha": -0.5}}},
            "method.wrapper.hparams.alpha",
            -0.5,
            "float in [0, 1]",
        ),
        ({"wrapper": {"name": "sam", "hparams": {"beta": 1}}}, "method.wrapper.hparams.beta", "beta", "rho, adaptive"),
        (
            {"wrapper": {"name": "sam", "hparams": {"adaptive": 1}}},
            "method.wrapper.hparams.adaptive",
            1,
            "true or false",
        ),
        (
            {"aggregator": {"name": "nash", "hparams": {"iterations": 2.5}}},
            "method.aggregator.hparams.iterations",
            2.5,
            "int in [1, inf)",
        ),
        (
            {"aggregator": {"name": "mgda", "hparams": {"normalization": "l1"}}},
            "method.aggregator.hparams.normalization",
            "l1",
            "one of 'none', 'l2', 'loss'",
        ),
        (
            {"weighting": {"name": "dwa", "hparams": {"temperature": 0.0}}},
            "method.weighting.hparams.temperature",
            0.0,
            "float in (0, inf)",
        ),
    ],
)
def test_bad_methods_name_field_value_and_allowed(method: dict[str, Any], field: str, value: Any, allowed: str) -> None:
    problem = refusal(TrainSpec, train(method=method))
    assert (problem.field, problem.value, problem.allowed) == (field, value, allowed)
    assert repr(value) in problem.message or str(value) in problem.message


def test_non_finite_hyper_parameters_are_refused() -> None:
    problem = refusal(TrainSpec, train(method={"wrapper": {"name": "sam", "hparams": {"rho": math.inf}}}))
    assert problem.field == "method.wrapper.hparams.rho" and "not finite" in problem.message


def test_unknown_top_level_field_lists_the_known_ones() -> None:
    problem = refusal(TrainSpec, train(epoch=3))
    assert problem.field == "epoch" and "epochs" in problem.allowed


def test_optimizer_fields_must_fit_the_optimizer() -> None:
    assert (
        TrainSpec.model_validate(train(optimizer={"name": "sgd", "momentum": 0.9}), context=CONTEXT).optimizer.momentum
        == 0.9
    )
    problem = refusal(TrainSpec, train(optimizer={"name": "adam", "momentum": 0.9}))
    assert (problem.field, problem.value) == ("optimizer.momentum", 0.9)
    assert refusal(TrainSpec, train(optimizer={"name": "rmsprop"})).field == "optimizer.name"


def test_sharding_gradients_needs_shardable_methods() -> None:
    spec = train(method={"aggregator": "graddrop"}, sharding="zero1", processes=2)
    assert TrainSpec.model_validate(spec, context=CONTEXT).sharding == "zero1"
    problem = refusal(TrainSpec, {**spec, "sharding": "zero3"})
    assert (problem.field, problem.value, problem.allowed) == ("sharding", "zero3", "none, zero1")


def test_deepspeed_backend_needs_a_zero_stage() -> None:
    spec = train(sharding="zero2", sharding_backend="deepspeed", processes=2)
    assert TrainSpec.model_validate(spec, context=CONTEXT).sharding_backend == "deepspeed"
    problem = refusal(TrainSpec, {**spec, "sharding": "none"})
    assert (problem.field, problem.value) == ("sharding", "none") and "zero1, zero2, zero3" in problem.allowed
    assert refusal(TrainSpec, {**spec, "sharding_backend": "fsdp"}).field == "sharding_backend"


def test_sweep_over_rho_and_alpha_counts_the_grid() -> None:
    document = sweep(
        {
            "method.wrapper.hparams.rho": {"type": "grid", "values": [0.01, 0.05, 0.1]},
            "method.wrapper.hparams.alpha": {"type": "grid", "values": [0.0, 0.5, 1.0]},
            "optimizer.lr": {"type": "choice", "values": [1e-3, 1e-2]},
        }
    )
    spec = SweepSpec.model_validate(document, context=CONTEXT)
    assert spec.trial_count() == 3 * 3 * 2
    random = SweepSpec.model_validate(
        sweep(
            {"method.wrapper.hparams.rho": {"type": "loguniform", "low": 1e-4, "high": 1.0}},
            search="random",
            num_trials=7,
        ),
        context=CONTEXT,
    )
    assert random.trial_count() == 7
    short = SweepSpec.model_validate(sweep({"wrapper.alpha": {"type": "grid", "values": [0.1, 0.9]}}), context=CONTEXT)
    assert list(short.space) == ["method.wrapper.hparams.alpha"]
    widths = SweepSpec.model_validate(
        sweep({"model_options.hidden": {"type": "choice", "values": [[16], [32, 32]]}}), context=CONTEXT
    )
    assert widths.trial_count() == 2


@pytest.mark.parametrize(
    ("space", "extra", "field", "fragment"),
    [
        (
            {"method.wrapper.hparams.alpha": {"type": "grid", "values": [0.5, 1.2]}},
            {},
            "space['method.wrapper.hparams.alpha']",
            "out of range",
        ),
        (
            {"method.wrapper.hparams.rho": {"type": "uniform", "low": -1.0, "high": 1.0}},
            {"search": "random", "num_trials": 2},
            "space['method.wrapper.hparams.rho']",
            "out of range",
        ),
        (
            {"method.wrapper.hparams.beta": {"type": "grid", "values": [1]}},
            {},
            "space['method.wrapper.hparams.beta']",
            "has no hyper-parameter 'beta'",
        ),
        (
            {"optimizer.learning_rate": {"type": "grid", "values": [1]}},
            {},
            "space['optimizer.learning_rate']",
            "unknown field",
        ),
        ({"epochs": {"type": "grid", "values": [0, 5]}}, {}, "space.epochs", "greater than or equal to 1"),
        ({"optimizer.lr": {"type": "uniform", "low": 0.1, "high": 0.2}}, {}, "search", "grid search cannot enumerate"),
        ({"optimizer.lr": {"type": "choice", "values": [0.1]}}, {"search": "random"}, "num_trials", "needs num_trials"),
        (
            {"optimizer.lr": {"type": "loguniform", "low": 0.0, "high": 0.2}},
            {"search": "random", "num_trials": 3},
            "space['optimizer.lr'].low",
            "low > 0",
        ),
        ({"optimizer.lr": {"type": "grid", "values": [0.1, 0.2]}}, {"num_trials": 3}, "num_trials", "does not match"),
    ],
)
def test_bad_sweeps_name_the_field(space: dict[str, Any], extra: dict[str, Any], field: str, fragment: str) -> None:
    problem = refusal(SweepSpec, sweep(space, **extra))
    assert problem.field == field and fragment in problem.message, problem


def test_submission_selects_the_spec_by_kind_and_reports_paths_inside_it() -> None:
    submission = JobSubmission.model_validate({"spec": train()}, context=CONTEXT)
    assert isinstance(submission.spec, TrainSpec)
    problem = refusal(
        JobSubmission, {"spec": {**sweep({"epochs": {"type": "grid", "values": [1]}}), "kind": "sweep", "mode": "up"}}
    )
    assert (problem.field, problem.value) == ("spec.mode", "up")
    assert refusal(JobSubmission, {"spec": {"kind": "eval"}}).field == "spec.kind"


def test_a_dumped_sgd_spec_validates_again() -> None:
    """A stored spec is the model's full dump, Adam's default betas included; it must read back unchanged."""
    spec = TrainSpec.model_validate(
        {"problem": "multi_digits", "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}}
    )
    assert TrainSpec.model_validate(spec.model_dump()) == spec


RHO_ALPHA = {
    "wrapper.rho": {"type": "grid", "values": [0.01, 0.1]},
    "wrapper.alpha": {"type": "grid", "values": [0.25, 0.75]},
}


def samo_sweep(space: dict[str, Any], **fields: Any) -> dict[str, Any]:
    base = train(method={"wrapper": "samo"})
    return {"base": base, "space": space, "metric": "test/mean/accuracy", "mode": "max", **fields}


def test_a_pbt_sweep_mutates_the_space_fields_it_names() -> None:
    every = SweepSpec.model_validate(
        samo_sweep(RHO_ALPHA, scheduler={"name": "pbt", "perturbation_interval": 2}), context=CONTEXT
    )
    assert every.mutated_paths() == ["method.wrapper.hparams.alpha", "method.wrapper.hparams.rho"]
    one = SweepSpec.model_validate(
        samo_sweep(RHO_ALPHA, scheduler={"name": "pbt", "perturbation_interval": 1, "mutate": ["wrapper.rho"]}),
        context=CONTEXT,
    )
    assert one.mutated_paths() == ["method.wrapper.hparams.rho"]
    assert SweepSpec.model_validate(samo_sweep(RHO_ALPHA), context=CONTEXT).mutated_paths() == []


@pytest.mark.parametrize(
    ("space", "extra", "field", "fragment"),
    [
        (RHO_ALPHA, {"scheduler": {"name": "pbt"}}, "scheduler.perturbation_interval", "needs perturbation_interval"),
        (
            RHO_ALPHA,
            {"scheduler": {"name": "pbt", "perturbation_interval": 1, "mutate": ["wrapper.rho", "optimizer.lr"]}},
            "scheduler.mutate.1",
            "only fields of the search space",
        ),
        (
            {"optimizer.lr": {"type": "grid", "values": [0.001, 0.01]}},
            {"scheduler": {"name": "pbt", "perturbation_interval": 1}},
            "space['optimizer.lr']",
            "method hyper-parameters only",
        ),
        (
            RHO_ALPHA,
            {"scheduler": {"name": "asha", "perturbation_interval": 2}},
            "scheduler.perturbation_interval",
            "applies to pbt only",
        ),
        (
            {"wrapper.rho": {"type": "uniform", "low": 0.001, "high": 0.1}},
            {"search": "optuna", "num_trials": 4, "scheduler": {"name": "pbt", "perturbation_interval": 1}},
            "search",
            "cannot follow optuna",
        ),
        ({"wrapper.rho": {"type": "uniform", "low": 0.001, "high": 0.1}}, {"search": "optuna"}, "num_trials", "optuna"),
        (RHO_ALPHA, {"search": "optuna", "num_trials": 4}, "space['method.wrapper.hparams.rho']", "use type='choice'"),
        ({"resources.gpus": {"type": "grid", "values": [0, 1]}}, {}, "space['resources.gpus']", "unknown field"),
    ],
)
def test_bad_schedulers_and_searches_name_the_field(
    space: dict[str, Any], extra: dict[str, Any], field: str, fragment: str
) -> None:
    problem = refusal(SweepSpec, samo_sweep(space, **extra))
    assert problem.field == field and fragment in problem.message, problem


def test_diagnostics_every_defaults_to_the_cores_and_refuses_zero() -> None:
    from flatmtl.workers.mtl.step import DEFAULT_DIAGNOSTICS_EVERY

    assert TrainSpec.model_validate(train(), context=CONTEXT).diagnostics_every == DEFAULT_DIAGNOSTICS_EVERY
    assert TrainSpec.model_validate(train(diagnostics_every=7), context=CONTEXT).diagnostics_every == 7
    assert "diagnostics_every" in str(refusal(TrainSpec, train(diagnostics_every=0)))


def test_resources_and_precision_of_a_run() -> None:
    spec = TrainSpec.model_validate(train(resources={"cpus": 2, "gpus": 0.5}, precision="bf16"), context=CONTEXT)
    assert (spec.resources.cpus, spec.resources.gpus, spec.precision) == (2.0, 0.5, "bf16")
    default = TrainSpec.model_validate(train(), context=CONTEXT)
    assert (default.resources.cpus, default.resources.gpus, default.precision) == (1.0, 0.0, "fp32")
    fp16 = refusal(TrainSpec, train(precision="fp16"))
    assert (fp16.field, fp16.value, fp16.allowed) == ("precision", "fp16", "fp32, bf16")
    assert "loss scaling" in fp16.message
    assert refusal(TrainSpec, train(resources={"cpus": 0})).field == "resources.cpus"
    assert refusal(TrainSpec, train(resources={"gpus": -1})).field == "resources.gpus"


def test_each_rank_of_a_gpu_run_gets_a_whole_gpu() -> None:
    """NCCL refuses two ranks on one GPU, which fractional shares let Ray do; one process may share a GPU."""
    assert TrainSpec.model_validate(train(processes=1, resources={"gpus": 0.5}), context=CONTEXT).processes == 1
    assert TrainSpec.model_validate(train(processes=4, resources={"gpus": 2}), context=CONTEXT).processes == 4
    shared = refusal(TrainSpec, train(processes=2, resources={"gpus": 0.5}))
    assert (shared.field, shared.value) == ("resources.gpus", 0.5)
    assert "NCCL" in shared.message and "whole" in shared.allowed
    assert refusal(TrainSpec, train(resources={"gpus": 1.5})).field == "resources.gpus"
    document = samo_sweep(RHO_ALPHA, resources_per_trial={"gpus": 0.25})
    assert SweepSpec.model_validate(document, context=CONTEXT).trial_resources().gpus == 0.25
    document["space"]["processes"] = {"type": "grid", "values": [1, 2]}
    assert refusal(SweepSpec, document).field == "resources_per_trial.gpus"


def test_a_sweep_takes_the_base_resources_unless_it_names_its_own() -> None:
    document = samo_sweep(RHO_ALPHA)
    document["base"]["resources"] = {"cpus": 2}
    assert SweepSpec.model_validate(document, context=CONTEXT).trial_resources().cpus == 2.0
    document["resources_per_trial"] = {"cpus": 0.5}
    assert SweepSpec.model_validate(document, context=CONTEXT).trial_resources().cpus == 0.5


def test_execution_settings_are_checked_and_belong_to_the_sweeps_base() -> None:
    spec = TrainSpec.model_validate(train(deterministic=True, loader_workers=3), context=CONTEXT)
    assert (spec.deterministic, spec.loader_workers) == (True, 3)
    default = TrainSpec.model_validate(train(), context=CONTEXT)
    assert (default.deterministic, default.loader_workers) == (False, None)
    too_many = refusal(TrainSpec, train(loader_workers=65))
    assert (too_many.field, too_many.value, too_many.allowed) == ("loader_workers", 65, "<= 64")
    not_a_flag = refusal(TrainSpec, train(deterministic="true"))
    assert (not_a_flag.field, not_a_flag.value, not_a_flag.allowed) == ("deterministic", "true", "true or false")
    swept = refusal(SweepSpec, sweep({"deterministic": {"type": "grid", "values": [True, False]}}))
    assert swept.field == "space.deterministic" and "unknown field" in swept.message
