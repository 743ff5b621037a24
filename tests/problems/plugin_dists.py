"""Installed plugins for the tests: the example package pip-installed into a folder, or a hand-written
distribution (its ``.dist-info`` with ``entry_points.txt`` beside one module), put on ``sys.path``."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flatmtl.workers.problems import plugins

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plugin"


def pip_install_example(target: Path) -> Path:
    """``pip install`` of examples/plugin into ``target`` (no dependencies: flatmtl is already here), built from a
    copy so the build leaves nothing in the repository."""
    source = shutil.copytree(EXAMPLE, target.parent / f"{target.name}-source")
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*command, "--target", str(target), str(source)], check=True, capture_output=True)
    return target


def write_distribution(folder: Path, name: str, module: str, source: str, entry_points: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(textwrap.dedent(source))
    info = folder / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    return folder


@contextmanager
def on_path(folder: Path) -> Iterator[None]:
    """``folder``'s distributions visible to entry-point discovery, and forgotten afterwards."""
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    plugins.problem_plugins.cache_clear()
    plugins.model_plugins.cache_clear()
    try:
        yield
    finally:
        sys.path.remove(str(folder))
        for module in [
            m
            for m in sys.modules
            if getattr(sys.modules[m], "__file__", "") and str(sys.modules[m].__file__).startswith(str(folder))
        ]:
            del sys.modules[module]
        importlib.invalidate_caches()
        plugins.problem_plugins.cache_clear()
        plugins.model_plugins.cache_clear()
