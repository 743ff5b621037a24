"""Where a job's runs persist through Ray: a local directory, a shared filesystem or an object store.

Ray Train persists every checkpoint a rank reports to the run's ``storage_path`` (and Ray Tune its experiment
state), through a pyarrow filesystem; ranks and trials read it back from there on whatever node they run. A
reported checkpoint is a snapshot of the run directory (``flatmtl.workers.training.rundir``): the checkpoint
file with the metrics, config, summary and plots written so far, so the worker collects a trial's results
from storage into the job's artifact directory without sharing a disk with the nodes.

``root`` is a path or a URI that pyarrow understands: ``/data/ray``, ``s3://bucket/prefix`` (with
``?endpoint_override=http://host:port`` for an S3-compatible server; credentials from the usual AWS
variables), ``gs://...``. Without one, each job keeps its storage in its own artifact directory.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class JobStorage:
    """A job's storage: ``uri`` is Ray's ``storage_path`` for its trials' Train runs and its Tune experiments."""

    uri: str

    @classmethod
    def for_job(cls, root: str | None, job_id: int, local_default: Path) -> JobStorage:
        if not root:
            return cls(str(local_default))
        base, _, query = root.partition("?")
        return cls(f"{base.rstrip('/')}/jobs/{job_id}" + (f"?{query}" if query else ""))

    def resolve(self) -> tuple[Any, str]:
        """The pyarrow filesystem and the path inside it (a local directory is created): Ray's ``storage_filesystem``
        and ``storage_path``."""
        import pyarrow.fs

        if "://" not in self.uri:
            Path(self.uri).mkdir(parents=True, exist_ok=True)
            return pyarrow.fs.LocalFileSystem(), str(Path(self.uri).resolve())
        filesystem, path = pyarrow.fs.FileSystem.from_uri(self.uri)
        return filesystem, path

    def read_text(self, relative: str) -> str | None:
        """A small file under the job's storage; None when it is not there."""
        import pyarrow.fs

        filesystem, root = self.resolve()
        path = f"{root}/{relative}"
        if filesystem.get_file_info(path).type != pyarrow.fs.FileType.File:
            return None
        with filesystem.open_input_stream(path) as stream:
            return stream.read().decode()

    def write_text(self, relative: str, text: str) -> None:
        filesystem, root = self.resolve()
        path = f"{root}/{relative}"
        filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with filesystem.open_output_stream(path) as stream:
            stream.write(text.encode())


@dataclass(frozen=True)
class LatestRun:
    """A trial's current Train run (its name under ``train/``) and the storage path of its newest checkpoint."""

    run: str
    checkpoint: str | None


def latest_file(index: int) -> str:
    return f"trials/{index:03d}.json"


def record_latest(storage: JobStorage, index: int, latest: LatestRun) -> None:
    """Written by the trial after each persisted report: what the worker collects and a later attempt resumes."""
    storage.write_text(latest_file(index), json.dumps({"run": latest.run, "checkpoint": latest.checkpoint}))


def read_latest(storage: JobStorage, index: int) -> LatestRun | None:
    text = storage.read_text(latest_file(index))
    if text is None:
        return None
    document = json.loads(text)
    return LatestRun(document["run"], document.get("checkpoint"))


def collect(filesystem: Any, path: str, into: Path) -> None:
    """Make the run directory ``into`` a copy of the checkpoint directory ``path``: each file replaced atomically,
    so the API never reads half a file, and files the checkpoint does not hold (an older summary) removed."""
    import pyarrow.fs

    into.mkdir(parents=True, exist_ok=True)
    kept: set[Path] = set()
    with tempfile.TemporaryDirectory(prefix=".collect-", dir=into) as staging:
        pyarrow.fs.copy_files(
            path, staging, source_filesystem=filesystem, destination_filesystem=pyarrow.fs.LocalFileSystem()
        )
        for folder, _, files in os.walk(staging):
            target = into / Path(folder).relative_to(staging)
            target.mkdir(parents=True, exist_ok=True)
            for name in files:
                os.replace(Path(folder) / name, target / name)
                kept.add(target / name)
    for folder, _, files in os.walk(into):
        for name in files:
            if into / Path(folder).relative_to(into) / name not in kept and not name.startswith(".collect-"):
                (Path(folder) / name).unlink(missing_ok=True)
