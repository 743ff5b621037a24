"""`flatmtl demo toy` end to end (small), plus the toy problems' definitions: Pareto sets where the two
task gradients are anti-parallel, and plain equal weighting lowering the mean objective."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from flatmtl.workers import mtl
from flatmtl.workers.cli import main
from flatmtl.workers.toy.problems import PROBLEMS, distance_to_polyline
from flatmtl.workers.toy.trajectory import RunSpec, run, wrapper_hparams


def run_demo(out: Path, *extra: str) -> tuple[int, str]:
    args = ["demo", "toy", "--out", str(out), "--steps", "4", "--aggregators", "mean", "--wrappers", "none,sam"]
    result = CliRunner().invoke(main, [*args, "--workers", "1", *extra])
    return result.exit_code, result.output


@pytest.mark.slow
def test_demo_writes_figures_and_tables_with_finite_end_points(tmp_path: Path) -> None:
    code, output = run_demo(tmp_path / "a", "--seed", "3")
    assert code == 0, output
    for name in ("toy_samo.png", "toy_cagrad.png", "results.json", "results.md"):
        assert (tmp_path / "a" / name).stat().st_size > 0
        assert str(tmp_path / "a" / name) in output
    table = json.loads((tmp_path / "a" / "results.json").read_text())
    for name, problem in table["problems"].items():
        runs = problem["runs"]
        assert len(runs) == 2 * len(PROBLEMS[name].starts)
        assert {(r["aggregator"], r["wrapper"]) for r in runs} == {("mean", "none"), ("mean", "sam")}
        for row in runs:
            values = [*row["final"], row["f1"], row["f2"], row["distance_to_pareto"], row["final_cosine"]]
            assert all(math.isfinite(v) for v in values)
    assert "| mean | sam |" in (tmp_path / "a" / "results.md").read_text()


def test_same_seed_gives_identical_tables(tmp_path: Path) -> None:
    for directory in ("first", "second"):
        code, output = run_demo(tmp_path / directory, "--seed", "11", "--problems", "cagrad")
        assert code == 0, output
    for name in ("results.json", "results.md"):
        assert (tmp_path / "first" / name).read_text() == (tmp_path / "second" / name).read_text()


@pytest.mark.parametrize(
    ("option", "value", "kind"),
    [("--aggregators", "mean,no_such_agg", "aggregator"), ("--wrappers", "none,no_such_wrap", "wrapper")],
)
def test_unknown_method_name_exits_2_naming_it_and_what_is_allowed(
    tmp_path: Path, option: str, value: str, kind: str
) -> None:
    result = CliRunner().invoke(main, ["demo", "toy", "--out", str(tmp_path), option, value])
    assert result.exit_code == 2
    bad = value.split(",")[1]
    assert f"unknown {kind} '{bad}'" in result.output
    assert "allowed:" in result.output
    assert not (tmp_path / "results.json").exists()


def test_unknown_problem_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["demo", "toy", "--out", str(tmp_path), "--problems", "rosenbrock"])
    assert result.exit_code == 2
    assert "'rosenbrock'" in result.output and "samo" in result.output


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_task_gradients_are_anti_parallel_inside_the_pareto_set(name: str) -> None:
    problem = PROBLEMS[name]
    polyline = problem.pareto_set()
    # points strictly inside the set: off its ends, where one task's gradient vanishes
    inside = polyline[:-1] + 0.37 * (polyline[1:] - polyline[:-1])
    inside = inside[(inside[:, 0] > polyline[0, 0] + 0.5) & (inside[:, 0] < polyline[-1, 0] - 0.5)]
    assert len(inside) > 0
    for point in inside:
        x = point.clone().requires_grad_(True)
        values = problem.objectives(x)
        g1 = torch.autograd.grad(values[0], x, retain_graph=True)[0]
        g2 = torch.autograd.grad(values[1], x)[0]
        assert torch.cosine_similarity(g1, g2, dim=0) == pytest.approx(-1.0, abs=1e-4)


def test_cagrad_pareto_set_passes_through_the_published_mean_minimum() -> None:
    # Liu et al. mark the minimum of the mean loss at (0, -8.3552) in their toy figures.
    polyline = PROBLEMS["cagrad"].pareto_set()
    middle = polyline[polyline[:, 0].abs().argmin()]
    assert float(middle[0]) == pytest.approx(0.0, abs=1e-9)
    assert float(middle[1]) == pytest.approx(-8.3552, abs=1e-3)


def test_distance_to_polyline() -> None:
    segment = torch.tensor([[-4.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    assert distance_to_polyline(torch.tensor([-2.0, 0.0], dtype=torch.float64), segment) == 0.0
    assert distance_to_polyline(torch.tensor([-2.0, 1.5], dtype=torch.float64), segment) == pytest.approx(1.5)
    assert distance_to_polyline(torch.tensor([3.0, 4.0], dtype=torch.float64), segment) == pytest.approx(5.0)


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_plain_equal_weighting_lowers_the_mean_objective(name: str) -> None:
    problem = PROBLEMS[name]
    for start in range(len(problem.starts)):
        result = run(RunSpec(name, "mean", "none", start, 60, 0, problem.rho))
        means = problem.objectives(result.trajectory).mean(dim=-1)
        assert len(means) == 61
        assert means[-1] < means[0]
        assert means[-10:].mean() < means[:10].mean()


@pytest.mark.slow
def test_worker_processes_give_the_same_table_as_one_process(tmp_path: Path) -> None:
    tables = []
    for workers in ("1", "2"):
        out = tmp_path / f"workers{workers}"
        args = ["demo", "toy", "--out", str(out), "--steps", "3", "--problems", "samo", "--aggregators", "mean"]
        result = CliRunner().invoke(main, [*args, "--wrappers", "sam", "--workers", workers])
        assert result.exit_code == 0, result.output
        tables.append((out / "results.json").read_text())
    assert tables[0] == tables[1]


def test_toy_radius_reaches_every_wrapper_radius() -> None:
    for method in mtl.methods("wrapper"):
        radii = {hp.name for hp in method.hparams if hp.name == "rho" or hp.name.startswith("rho_")}
        assert wrapper_hparams(method.name, 0.7) == dict.fromkeys(radii, 0.7)
    assert wrapper_hparams("none", 0.7) == {}


@pytest.mark.parametrize(("problem", "wrapper"), [("multi_digits", "samo"), ("multi_fashion", "fmtl")])
def test_the_service_demo_submits_a_valid_rho_by_alpha_sweep(tmp_path: Path, problem: str, wrapper: str) -> None:
    from flatmtl.service.specs.sweep import SweepSpec
    from flatmtl.workers.worker.service_demo import RADII, ServiceDemo

    demo = ServiceDemo(out=tmp_path, problem=problem, wrapper=wrapper, rhos=(0.001, 0.01), alphas=(0.25, 0.75))
    spec = SweepSpec.model_validate(demo.sweep())
    assert spec.base.problem == problem and spec.base.method.wrapper.name == wrapper
    assert sorted(spec.space) == sorted(f"method.wrapper.hparams.{name}" for name in RADII[wrapper])
    assert spec.trial_count() == 4 and (spec.metric, spec.mode) == ("test/mean/accuracy", "max")


def test_the_service_demo_uses_fashion_mnist_exactly_when_its_files_are_installed() -> None:
    from flatmtl.workers.problems.multi_image import FASHION_MNIST_DIR
    from flatmtl.workers.worker.service_demo import default_problem

    installed = FASHION_MNIST_DIR.is_dir() and len(list(FASHION_MNIST_DIR.glob("*-ubyte*"))) == 4
    assert default_problem() == ("multi_fashion" if installed else "multi_digits")
