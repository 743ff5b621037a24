"""Plugins through entry points: the example package installed by pip trains like a built-in problem, and the
contract is checked with errors that name the plugin, the entry point and what is missing or of the wrong shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flatmtl.workers import problems
from flatmtl.workers.problems import plugins
from flatmtl.workers.problems.registry import catalog
from flatmtl.workers.training import ConfigError, RunOptions, check_runnable, train
from tests.problems.plugin_dists import on_path, pip_install_example, write_distribution
from tests.training.specs import spec


@pytest.mark.slow
def test_the_example_package_installed_by_pip_trains_as_a_named_problem(tmp_path: Path) -> None:
    site = pip_install_example(tmp_path / "site")
    listing = subprocess.run(
        [str(Path(sys.executable).parent / "flatmtl"), "problems", "--json"],
        env={**os.environ, "PYTHONPATH": str(site)},
        check=True,
        capture_output=True,
        text=True,
    )
    listed_by_cli = {(e["kind"], e["name"]): e["source"] for e in json.loads(listing.stdout)}
    assert listed_by_cli["problem", "sines"] == "plugin flatmtl-example-plugin (flatmtl_example.problem:Sines)"
    assert listed_by_cli["problem", "table"] == "built-in"
    with on_path(site):
        listed = {(e["kind"], e["name"]): e for e in catalog()}
        assert listed["problem", "sines"]["source"] == "plugin flatmtl-example-plugin (flatmtl_example.problem:Sines)"
        assert listed["problem", "sines"]["options"] == ["seed", "features", "train_size", "test_size"]
        assert listed["model", "two_towers"]["options"] == ["hidden"]
        run = spec(problem="sines", problem_options={"train_size": 128}, model="two_towers", model_options={})
        check_runnable(run)
        result = train(run, tmp_path / "run", options=RunOptions(plots=False))
        assert result.status == "SUCCEEDED"
        assert {"test/sin/mae", "test/cos/mae"} <= set(result.summary["final"])
        # A plugin model serves built-in problems too.
        assert problems.build("multi_digits", train_size=64, test_size=32).model("two_towers", hidden=4)


PROBLEM_SOURCE = """
    import torch
    from torch import nn
    from flatmtl.workers.problems import MultiTaskNet, Problem, Task, TaskTensorDataset
    from flatmtl.workers.problems.tasks import Regression

    class NoLoad(Problem):
        name = "no_load"
        model_names = ("mlp",)
        default_model = "mlp"

    class Pairs(Problem):
        name = "pairs"
        model_names = ("mlp",)
        default_model = "mlp"

        def __init__(self, *, seed=0):
            super().__init__(seed=seed)
            self.tasks = [Task("a", Regression()), Task("b", Regression())]
            self.input_shape = (3,)

        def _load(self, split):
            return TaskTensorDataset(torch.randn(8, 3), [torch.randn(8), torch.randn(8)])

    class OneHead(MultiTaskNet):
        def __init__(self, width):
            super().__init__()
            self.trunk, self.head = nn.Linear(3, 4), nn.Linear(4, width)

        def shared_parameters(self):
            return list(self.trunk.parameters())

        def task_parameters(self):
            return [list(self.head.parameters()), []]

        def forward_with_representation(self, x):
            representation = self.trunk(x)
            return [self.head(representation)] * self.width_outputs, representation

    def one_output(input_shape, tasks):
        model = OneHead(1)
        model.width_outputs = 1
        return model

    def wide_outputs(input_shape, tasks):
        model = OneHead(3)
        model.width_outputs = 2
        return model

    def raises_inside(input_shape, tasks):
        raise KeyError("no such layer")
"""

ENTRY_POINTS = """
    [flatmtl.problems]
    no_load = broken_plugin:NoLoad
    pairs = broken_plugin:Pairs
    yeast = broken_plugin:Pairs
    exploding = exploding_module:Anything

    [flatmtl.models]
    one_output = broken_plugin:one_output
    wide_outputs = broken_plugin:wide_outputs
    raises_inside = broken_plugin:raises_inside
"""


@pytest.fixture
def broken(tmp_path: Path):
    folder = write_distribution(tmp_path, "broken-plugin", "broken_plugin", PROBLEM_SOURCE, ENTRY_POINTS)
    (folder / "exploding_module.py").write_text("raise RuntimeError('boom at import')\n")
    with on_path(folder):
        yield


def _refusal(model: str, problem: str = "pairs") -> str:
    with pytest.raises(ConfigError) as caught:
        check_runnable(spec(problem=problem, problem_options={}, model=model, model_options={}))
    return str(caught.value)


@pytest.mark.usefixtures("broken")
def test_each_broken_contract_is_named() -> None:
    assert "missing method _load(split)" in _refusal("mlp", "no_load")
    assert "broken-plugin (broken_plugin:NoLoad)" in _refusal("mlp", "no_load")
    assert "returned 1 outputs for 2 tasks" in _refusal("one_output")
    assert "the output for task 'a' has shape (2, 3); its kind Regression needs (2, 1)" in _refusal("wide_outputs")
    assert "KeyError: 'no such layer'" in _refusal("raises_inside")
    exploding = _refusal("mlp", "exploding")
    assert "import failed: RuntimeError('boom at import')" in exploding and "exploding_module:Anything" in exploding
    # the name collision is refused and the built-in problem keeps its name
    assert plugins.problem_plugins()["yeast"].error == "the name is taken by a built-in one"
    assert type(problems.build("yeast")).__module__ == "flatmtl.workers.problems.yeast"
    check_runnable(spec(problem="pairs", problem_options={}, model="mlp", model_options={"hidden": [4]}))
