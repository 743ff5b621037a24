"""What reporting each epoch's checkpoint through Ray Train storage costs, against plain local writes.

Each run is one Ray Train worker training a problem with the worker's own rank code
(``flatmtl.workers.worker.ranks``): the Trainer writes its run directory locally either way (``latest.pt``
at every epoch end). ``local`` reports each epoch's metrics only, as runs did before storage; ``storage``
reports each epoch with rank 0's run directory as a Ray Train checkpoint, which Ray persists to the run's
storage (a local directory by default, ``--storage s3://...`` for an object store). The rank times every
report call and the training between reports. Ray Train's controller takes a report at its polling
interval, which the worker sets to 1 s and this benchmark to 0.05 s so that the wait does not hide the
checkpoint's cost. Runs of the two modes alternate, ``--rounds`` times per model; the overhead is the
median report time of ``storage`` less that of ``local``, as a share of the median epoch of ``local``
(training plus report; target: <= 5% at one checkpoint per epoch).

    .venv/bin/python benchmarks/ray_storage.py [--rounds 3] [--epochs 4] [--storage URI]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from flatmtl.service.specs.train import TrainSpec
from flatmtl.workers.training import RunDirectory, RunOptions
from flatmtl.workers.training.trainer import RankContext, Trainer
from flatmtl.workers.worker.ranks import EpochReporter, restore
from flatmtl.workers.worker.storage import JobStorage

MODELS: dict[str, dict[str, Any]] = {
    "lenet": {"model": "lenet", "model_options": {}},
    "mlp": {"model": "mlp", "model_options": {"hidden": [256, 256]}},
}


def spec(model: str, epochs: int) -> TrainSpec:
    return TrainSpec.model_validate(
        {
            "problem": "multi_digits",
            "problem_options": {"train_size": 2048, "test_size": 256},
            **MODELS[model],
            "epochs": epochs,
            "batch_size": 32,
            "seed": 0,
        }
    )


class TimedReporter(EpochReporter):
    """The worker's reporter, timing each report; ``with_checkpoints=False`` reports metrics only."""

    def __init__(self, run: RunDirectory, *, with_checkpoints: bool) -> None:
        super().__init__(0, run)
        self.with_checkpoints = with_checkpoints
        self.report_s: list[float] = []
        self.epoch_ends: list[float] = []

    def report(self, metrics: dict[str, Any], *, with_checkpoint: bool) -> None:
        started = time.perf_counter()
        super().report(metrics, with_checkpoint=with_checkpoint and self.with_checkpoints)
        ended = time.perf_counter()
        self.report_s.append(ended - started)
        self.epoch_ends.append(ended)


def bench_rank(config: dict[str, Any]) -> None:
    import ray.train

    from flatmtl.workers.worker.contracts import RankConfig

    torch.set_num_threads(1)
    train_spec = TrainSpec.model_validate(config["spec"])
    options = RunOptions(device="cpu", threads=1, plots=False)
    with tempfile.TemporaryDirectory(prefix="flatmtl-bench-") as scratch:
        run = RunDirectory(Path(scratch) / "run")
        resume = restore(run, RankConfig(train_spec, options, "unused"))
        reporter = TimedReporter(run, with_checkpoints=config["mode"] == "storage")
        started = time.perf_counter()
        trainer = Trainer(train_spec, run, options, RankContext(stop_event=reporter), resume=resume)
        reporter.attach(trainer)
        trainer.run()
        reporter.flush()
        ends = reporter.epoch_ends
        epochs = [end - begin for begin, end in zip([started, *ends], ends, strict=False)]
        Path(config["out"]).write_text(json.dumps({"report_s": reporter.report_s, "epoch_s": epochs[1:]}))
    ray.train.report({"done": 1})


def one_run(model: str, mode: str, epochs: int, storage: JobStorage, index: int, out: Path) -> dict[str, Any]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    filesystem, root = storage.resolve()
    result = out / f"{model}-{mode}-{index}.json"
    TorchTrainer(
        bench_rank,
        train_loop_config={"spec": spec(model, epochs).model_dump(mode="json"), "mode": mode, "out": str(result)},
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(
            name=f"{model}-{mode}-{index}", storage_path=f"{root}/train", storage_filesystem=filesystem
        ),
    ).fit()
    return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--storage", default=None, help="Ray storage URI [default: a temporary directory].")
    args = parser.parse_args()

    import ray

    v2 = {"RAY_TRAIN_V2_ENABLED": "1", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.05"}
    os.environ.update(v2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": v2})
    with tempfile.TemporaryDirectory(prefix="flatmtl-ray-storage-") as scratch:
        out = Path(scratch)
        storage = JobStorage(args.storage or str(out / "storage"))
        print(f"storage: {storage.uri}; {args.epochs} epochs per run (the first is left out), {args.rounds} rounds")
        print(f"{'model':<6} {'epoch (local)':>14} {'report local':>13} {'report storage':>15} {'overhead':>9}")
        for model in MODELS:
            runs: dict[str, list[dict[str, Any]]] = {"local": [], "storage": []}
            for index in range(args.rounds):
                for mode in ("local", "storage") if index % 2 == 0 else ("storage", "local"):
                    runs[mode].append(one_run(model, mode, args.epochs, storage, index, out))
            epoch = statistics.median(s for r in runs["local"] for s in r["epoch_s"])
            local = statistics.median(s for r in runs["local"] for s in r["report_s"])
            stored = statistics.median(s for r in runs["storage"] for s in r["report_s"])
            print(
                f"{model:<6} {epoch * 1e3:>11.0f} ms {local * 1e3:>10.1f} ms {stored * 1e3:>12.1f} ms "
                f"{(stored - local) / epoch:>8.1%}"
            )
    ray.shutdown()


if __name__ == "__main__":
    main()
