"""Finished runs are found by their config: a run folder written before the spec gained a field (at its default)
is reused under the current key, and a folder of another training never is."""

from __future__ import annotations

import json
from pathlib import Path

from flatmtl.workers.reproduce import design
from flatmtl.workers.reproduce.runs import RunRequest, adopt
from flatmtl.workers.reproduce.scale import QUICK
from flatmtl.workers.training.config import parse_spec


def older_config(spec: dict) -> dict:
    """The resolved spec as an earlier version of the spec wrote it: without fields that were added later."""
    resolved = parse_spec(spec).model_dump(mode="json")
    del resolved["sharding"]
    del resolved["optimizer"]["nesterov"]
    return resolved


def write_run(root: Path, name: str, config: dict) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_run_of_an_older_spec_version_is_adopted_under_its_current_key(tmp_path: Path) -> None:
    spec = design.spec(QUICK, design.aggregator_method("fairgrad", "SAMO", rho=0.01), 0)
    request = RunRequest(spec)
    old = write_run(tmp_path, f"{spec['name']}-0123456789", older_config(spec))
    other_seed = write_run(tmp_path, f"{spec['name']}-abcdefabcd", older_config({**spec, "seed": 1}))
    assert adopt(tmp_path, [request]) == 1
    assert not old.exists() and (tmp_path / request.directory_name / "config.json").exists()
    assert other_seed.exists()
    assert adopt(tmp_path, [request]) == 0  # already in place


def test_a_changed_field_is_a_different_training(tmp_path: Path) -> None:
    spec = design.spec(QUICK, design.aggregator_method("fairgrad", "SAMO", rho=0.01), 0)
    zero1 = {**older_config(spec), "sharding": "zero1"}
    write_run(tmp_path, f"{spec['name']}-0123456789", zero1)
    assert adopt(tmp_path, [RunRequest(spec)]) == 0
