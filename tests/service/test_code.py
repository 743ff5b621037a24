"""Packing a directory of code, and the checks every archive passes before it is stored or unpacked."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from flatmtl.service import code


def _tar(members: dict[str, bytes | str]) -> bytes:
    """A tar.gz of ``name -> bytes`` files and ``name -> "->target"`` symlinks."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content.removeprefix("->")
                archive.addfile(info)
            else:
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def test_pack_leaves_out_caches_and_links_and_unpacks_to_the_same_files(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "pkg" / "__pycache__").mkdir(parents=True)
    (source / "pkg" / "__init__.py").write_text("X = 1\n")
    (source / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0")
    (source / "stale.pyc").write_bytes(b"\0")
    (source / ".git").mkdir()
    (source / ".git" / "HEAD").write_text("ref\n")
    (source / ".venv" / "bin").mkdir(parents=True)
    (source / ".venv" / "bin" / "python").write_text("")
    (source / "problem.py").write_text("Y = 2\n")
    (source / "outside").symlink_to("/etc/passwd")
    data = code.pack(source, 2**20)
    assert sorted(m.name for m in code.check(data, 2**20) if m.isfile()) == ["pkg/__init__.py", "problem.py"]
    assert code.pack(source, 2**20) == data  # the same files give the same digest
    stored = code.store(tmp_path / "artifacts", data, 2**20)
    assert stored == code.digest(data) and code.archive_path(tmp_path / "artifacts", stored).read_bytes() == data
    into = tmp_path / "unpacked"
    into.mkdir()
    code.unpack(tmp_path / "artifacts", stored, into, 2**20)
    assert (into / "pkg" / "__init__.py").read_text() == "X = 1\n" and (into / "problem.py").read_text() == "Y = 2\n"


def test_pack_refuses_a_directory_over_the_limit(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(os.urandom(16384))  # incompressible
    with pytest.raises(code.CodeArchiveError, match="limit of 4096 bytes"):
        code.pack(tmp_path, 4096)


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ({"../evil.py": b"x"}, "'../evil.py' escapes"),
        ({"/etc/evil.py": b"x"}, "'/etc/evil.py' escapes"),
        ({"link": "->/etc/passwd"}, "'link' is a link"),
        ({"big.txt": b"\0" * 5000}, "unpacks to more than the limit of 4096"),
    ],
)
def test_check_refuses_escaping_links_and_oversized_content(members: dict[str, bytes | str], reason: str) -> None:
    with pytest.raises(code.CodeArchiveError, match=reason.replace(".", r"\.")):
        code.check(_tar(members), 4096)


def test_unpack_refuses_a_stored_archive_that_does_not_match_its_digest(tmp_path: Path) -> None:
    data = _tar({"a.py": b"A = 1\n"})
    stored = code.store(tmp_path, data, 4096)
    code.archive_path(tmp_path, stored).write_bytes(_tar({"a.py": b"A = 2\n"}))
    with pytest.raises(code.CodeArchiveError, match="does not match"):
        code.unpack(tmp_path, stored, tmp_path / "into", 4096)
