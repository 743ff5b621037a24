"""A base install (``pip install flatmtl``, no extras) in a clean virtual environment: the wheel carries every
module and data file, and ``flatmtl`` starts, lists the methods, runs the MTL core and trains a bundled
problem without the service, Ray, DeepSpeed or dataset packages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import venv
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"api": "api", "service": "service", "workers": "workers"}
SERVICE_DATA = ("method_catalog.json", "alembic.ini", "migrations/env.py", "migrations/script.py.mako")
EXTRAS_ONLY = ("httpx", "fastapi", "sqlalchemy", "ray", "deepspeed", "sklearn", "river")
CORE_CHECK = """
import torch
from flatmtl.workers import mtl
grads = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
print(mtl.aggregator("mgda")(grads).tolist())
"""

pytestmark = pytest.mark.slow


def _run(command: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _checked(command: list[str], cwd: Path, timeout: float = 600) -> str:
    result = _run(command, cwd, timeout)
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(command)} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result.stdout


@pytest.fixture(scope="module")
def base_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The venv's bin folder after a non-editable install of a copy of the source tree (pip builds in the
    source folder, so the checkout stays clean)."""
    root = tmp_path_factory.mktemp("base_install")
    source = root / "source"
    junk = shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__", "runs", "data", "out")
    shutil.copytree(REPO, source, ignore=junk)
    venv.create(root / "venv", with_pip=True)
    bin_dir = root / "venv" / "bin"
    _checked([str(bin_dir / "python"), "-m", "pip", "install", "-q", "-c", "constraints-cpu.txt", str(source)], source)
    return bin_dir


def _site_packages(bin_dir: Path) -> Path:
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    return Path(_checked([str(bin_dir / "python"), "-c", code], bin_dir).strip())


def test_the_wheel_carries_every_module_and_the_service_data(base_install: Path) -> None:
    installed = _site_packages(base_install) / "flatmtl"
    missing = [
        f"{folder}/{path.relative_to(REPO / folder)}"
        for folder in FOLDERS
        for path in (REPO / folder).rglob("*.py")
        if "__pycache__" not in path.parts and not (installed / folder / path.relative_to(REPO / folder)).is_file()
    ]
    missing += [f"service/{name}" for name in SERVICE_DATA if not (installed / "service" / name).is_file()]
    migrations = sorted(p.name for p in (REPO / "service/migrations/versions").glob("*.py"))
    assert migrations and all((installed / "service/migrations/versions" / name).is_file() for name in migrations)
    assert not missing, f"not in the wheel: {missing}"


def test_base_install_lacks_the_extras_and_runs_the_core(base_install: Path, tmp_path: Path) -> None:
    python = str(base_install / "python")
    present = _checked(
        [python, "-c", f"import importlib.util as u; print([m for m in {EXTRAS_ONLY!r} if u.find_spec(m)])"], tmp_path
    )
    assert present.strip() == "[]", f"a base install should not bring {present.strip()}"
    assert json.loads(_checked([python, "-c", CORE_CHECK], tmp_path)) == pytest.approx([0.5, 0.5])


def test_flatmtl_starts_lists_methods_and_trains_a_bundled_problem(base_install: Path, tmp_path: Path) -> None:
    flatmtl = str(base_install / "flatmtl")
    assert "version" in _checked([flatmtl, "--version"], tmp_path)
    assert "train" in _checked([flatmtl, "--help"], tmp_path)
    listed = json.loads(_checked([flatmtl, "methods", "--json"], tmp_path))
    assert {"weighting", "aggregator", "wrapper"} <= {method["kind"] for method in listed}
    config = {
        "problem": "synthetic_regression",
        "problem_options": {"train_size": 128, "test_size": 32},
        "model_options": {"hidden": [8]},
        "method": {"aggregator": "mgda"},
        "epochs": 1,
        "batch_size": 32,
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    _checked([flatmtl, "train", "config.yaml", "--out", str(out), "--device", "cpu"], tmp_path)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "SUCCEEDED", summary
