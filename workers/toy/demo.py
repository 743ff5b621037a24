"""``flatmtl demo toy``: every chosen aggregator x wrapper on the two-objective toy problems.

Runs are independent and each is deterministic for its seed, so they are spread over a few worker
processes and collected in a fixed order: the tables are identical for a seed whatever the workers.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from flatmtl.workers.mtl import registry
from flatmtl.workers.mtl.errors import MethodError
from flatmtl.workers.toy.problems import PROBLEMS
from flatmtl.workers.toy.report import plot_problem, write_tables
from flatmtl.workers.toy.trajectory import RunResult, RunSpec, run

DEFAULT_AGGREGATORS = ("mean", "mgda", "pcgrad", "cagrad", "nash_mtl")
DEFAULT_WRAPPERS = ("none", "sam", "g_sam", "fmtl", "samo")


@dataclass(frozen=True)
class ToyDemo:
    out: Path
    problems: tuple[str, ...]
    aggregators: tuple[str, ...]
    wrappers: tuple[str, ...]
    steps: int
    seed: int = 0
    rho: float | None = None
    workers: int = 1

    def specs(self) -> list[RunSpec]:
        return [
            RunSpec(name, aggregator, wrapper, start, self.steps, self.seed, self.rho_for(name))
            for name in self.problems
            for aggregator in self.aggregators
            for wrapper in self.wrappers
            for start in range(len(PROBLEMS[name].starts))
        ]

    def rho_for(self, problem: str) -> float:
        return PROBLEMS[problem].rho if self.rho is None else self.rho


def parse_names(kind: registry.Kind, text: str) -> tuple[str, ...]:
    """A comma-separated list of method names, each checked against the registry."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise MethodError(f"no {kind} given; allowed: {', '.join(m.name for m in registry.methods(kind))}")
    for name in names:
        registry.spec(kind, name)
    return names


def parse_problems(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in PROBLEMS]
    if unknown or not names:
        raise MethodError(f"unknown toy problem {', '.join(map(repr, unknown))}; allowed: {', '.join(PROBLEMS)}")
    return names


def run_all(specs: Sequence[RunSpec], workers: int) -> list[RunResult]:
    """Every run, in the order of ``specs``, with a progress bar."""
    progress = tqdm(total=len(specs), desc="toy runs", unit="run")
    try:
        if workers <= 1:
            results = []
            for spec in specs:
                results.append(run(spec))
                progress.update()
            return results
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [pool.submit(run, spec) for spec in specs]
            for _ in as_completed(futures):
                progress.update()
            return [future.result() for future in futures]
    finally:
        progress.close()


def run_demo(demo: ToyDemo, echo: Callable[[str], None] = print) -> list[Path]:
    """Run every trajectory, then write one figure per problem and the result tables into ``demo.out``."""
    demo.out.mkdir(parents=True, exist_ok=True)
    results = run_all(demo.specs(), demo.workers)
    written = []
    for name in demo.problems:
        problem = PROBLEMS[name]
        path = demo.out / f"toy_{name}.png"
        subtitle = (
            f"Adam, {demo.steps} steps, seed {demo.seed}, rho {demo.rho_for(name):g}; "
            "rows: aggregator, columns: wrapper"
        )
        plot_problem(
            problem, [r for r in results if r.spec.problem == name], demo.aggregators, demo.wrappers, path, subtitle
        )
        written.append(path)
    settings = {
        "seed": demo.seed,
        "steps": demo.steps,
        "aggregators": ",".join(demo.aggregators),
        "wrappers": ",".join(demo.wrappers),
    }
    written.extend(write_tables(demo.out, [PROBLEMS[n] for n in demo.problems], results, settings))
    for path in written:
        echo(f"wrote {path}")
    return written
