"""The training specs the claims ask for: methods by name, the problems' reduced sizes, the optimizer.

Every run of the report is a plain TrainSpec document, so any row of any table can be re-run alone
with ``flatmtl train`` from the config the report writes. Runs that two claims share (EW with Adam is
the baseline of claims 4, 5 and 6) are the same document and train once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flatmtl.workers.reproduce.scale import Scale

DEFAULT_MNIST_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist"
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
PROBLEM = "multi_fashion"
K14_PROBLEM = "yeast"


@dataclass(frozen=True)
class Method:
    """A weighting x aggregator x wrapper with hyper-parameters, and the label tables show."""

    label: str
    weighting: str = "ew"
    aggregator: str = "mean"
    wrapper: str = "none"
    weighting_hparams: dict[str, Any] = field(default_factory=dict)
    aggregator_hparams: dict[str, Any] = field(default_factory=dict)
    wrapper_hparams: dict[str, Any] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        return {
            "weighting": {"name": self.weighting, "hparams": dict(self.weighting_hparams)},
            "aggregator": {"name": self.aggregator, "hparams": dict(self.aggregator_hparams)},
            "wrapper": {"name": self.wrapper, "hparams": dict(self.wrapper_hparams)},
        }


AGGREGATOR_LABELS = {
    "mean": "EW",
    "mgda": "MGDA",
    "pcgrad": "PCGrad",
    "cagrad": "CAGrad",
    "imtl_g": "IMTL-G",
    "fairgrad": "FairGrad",
}
VARIANTS = ("base", "F", "SAMO")


def aggregator_method(aggregator: str, variant: str = "base", **wrapper_hparams: Any) -> Method:
    """``base``: the plain step; ``F``: the F-MTL wrapper; ``SAMO``: the SAMO wrapper (paper defaults unless given)."""
    name = AGGREGATOR_LABELS.get(aggregator, aggregator)
    wrapper = {"base": "none", "F": "fmtl", "SAMO": "samo"}[variant]
    label = name if variant == "base" else f"{variant}-{name}"
    return Method(label, aggregator=aggregator, wrapper=wrapper, wrapper_hparams=wrapper_hparams)


def named_method(name: str) -> Method:
    """Claim 5's methods by the names the paper uses: loss weightings with the mean, aggregators with EW."""
    if name == "ew":
        return Method("EW")
    if name == "uw":
        return Method("UW", weighting="uw")
    if name == "rlw":
        return Method("RLW", weighting="rlw", weighting_hparams={"distribution": "normal"})
    return aggregator_method(name)


def rlw(distribution: str) -> Method:
    return Method(f"RLW ({distribution})", weighting="rlw", weighting_hparams={"distribution": distribution})


def fmtl_radius(rho: float) -> dict[str, float]:
    """F-MTL's two radii set equal, as the paper's sensitivity study (Figure 10) does."""
    return {"rho_shared": rho, "rho_task": rho}


def has_mnist(directory: Path) -> bool:
    return all(any(directory.glob(f"{stem}*")) for stem in MNIST_FILES)


def conflict_problem(mnist_dir: Path | None) -> tuple[str, dict[str, Any]]:
    """Claim 1's problem: Multi-(Fashion+MNIST) as in the F-MTL paper's Figure 3 when MNIST files are given,
    else Multi-Fashion (Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package)."""
    if mnist_dir is not None and has_mnist(mnist_dir):
        return "multi_fashion_mnist", {"data_dir": str(mnist_dir)}
    return PROBLEM, {}


def optimizer(name: str, lr: float, scale: Scale) -> dict[str, Any]:
    if name == "sgd":
        return {"name": "sgd", "lr": lr, "momentum": scale.sgd_momentum}
    return {"name": name, "lr": lr}


def spec(
    scale: Scale,
    method: Method,
    seed: int,
    *,
    problem: str = PROBLEM,
    problem_options: dict[str, Any] | None = None,
    optim: dict[str, Any] | None = None,
    epochs: int | None = None,
) -> dict[str, Any]:
    """The TrainSpec document of one run at ``scale``: Adam at ``scale.lr`` unless ``optim`` says otherwise.

    Diagnostics run at every step: the claims read gradient conflict per step, as the papers measure it."""
    return {
        "name": f"{method.label}-seed{seed}".replace(" ", "_").replace("(", "").replace(")", ""),
        "problem": problem,
        "problem_options": {"train_size": scale.train_size, "test_size": scale.test_size, **(problem_options or {})},
        "method": method.document(),
        "optimizer": optim or {"name": "adam", "lr": scale.lr},
        "epochs": epochs or scale.epochs,
        "batch_size": scale.batch_size,
        "seed": seed,
        "diagnostics_every": 1,
    }
