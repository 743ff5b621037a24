"""Tiny multi_digits training specs for the training tests (a few hundred canvases, a small MLP)."""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from flatmtl.service.catalog import Catalog
from flatmtl.service.specs.train import TrainSpec

TASKS = ("top_left", "bottom_right")
TRAIN_SIZE = 192
TEST_SIZE = 64

BASE: dict[str, Any] = {
    "problem": "multi_digits",
    "problem_options": {"train_size": TRAIN_SIZE, "test_size": TEST_SIZE},
    "model": "mlp",
    "model_options": {"hidden": [16]},
    "epochs": 2,
    "batch_size": 32,
    "seed": 3,
}


def document(**overrides: Any) -> dict[str, Any]:
    """The base spec as a plain dict with top-level fields replaced."""
    spec = copy.deepcopy(BASE)
    spec.update(overrides)
    return spec


@cache
def registry_catalog() -> Catalog:
    """The catalog as the registry describes it now, so tests may use any registered method even while the
    committed service/method_catalog.json lags behind."""
    from flatmtl.workers.catalog_export import build_catalog

    return Catalog(build_catalog())


def spec(**overrides: Any) -> TrainSpec:
    return TrainSpec.model_validate(document(**overrides), context={"catalog": registry_catalog()})
