"""``POST /v1/code``: the code scope, the archive checks as 4xx naming the field, and specs that run shipped code."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from flatmtl.service import code
from flatmtl.service.tokens import create_token
from tests.api.conftest import Api, make_api
from tests.api.test_jobs_api import TRAIN
from tests.service.test_code import _tar

LIMIT = 4096


@pytest.fixture
def api(database_url: str, tmp_path: Path) -> Iterator[Api]:
    for made in make_api(database_url, tmp_path, code_max_bytes=LIMIT):
        made.tokens["carol"] = create_token(made.db, made.settings.token_key(), "carol", ["code"])
        yield made


def _upload(api: Api, data: bytes, user: str = "carol") -> tuple[int, dict]:
    response = api.client.post(
        "/v1/code", content=data, headers={**api.as_user(user), "Content-Type": "application/octet-stream"}
    )
    return response.status_code, response.json()


def test_an_upload_is_stored_by_its_digest_and_a_spec_runs_it_with_the_code_scope(api: Api) -> None:
    data = _tar({"mine/__init__.py": b"", "mine/problem.py": b"class Mine: ...\n"})
    status, body = _upload(api, data)
    assert status == 201 and body == {"digest": code.digest(data), "size": len(data)}
    assert code.archive_path(api.settings.artifacts, body["digest"]).read_bytes() == data
    spec = {**TRAIN, "problem": "mine.problem:Mine", "code": body["digest"]}
    refused = api.client.post("/v1/jobs", json={"spec": spec}, headers=api.as_user("alice"))
    assert refused.status_code == 403 and "'code' scope" in refused.json()["message"]
    accepted = api.client.post("/v1/jobs", json={"spec": spec}, headers=api.as_user("carol"))
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["spec"]["code"] == body["digest"]


def test_a_module_attribute_problem_without_code_names_the_code_field(api: Api) -> None:
    spec = {**TRAIN, "problem": "mine.problem:Mine"}
    response = api.client.post("/v1/jobs", json={"spec": spec}, headers=api.as_user("carol"))
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "spec.code"


def test_uploads_without_the_scope_or_with_bad_archives_are_refused(api: Api) -> None:
    good = _tar({"a.py": b"A = 1\n"})
    status, body = _upload(api, good, user="alice")
    assert status == 403 and "'code' scope" in body["message"]
    cases = {
        "escaping path": (_tar({"../a.py": b"A = 1\n"}), "'../a.py' escapes"),
        "symlink": (_tar({"a.py": "->/etc/passwd"}), "'a.py' is a link"),
        "over the limit": (os.urandom(LIMIT + 1), f"over the limit of {LIMIT} bytes"),
        "not an archive": (b"plain text", "not a readable tar.gz"),
    }
    for case, (data, reason) in cases.items():
        status, body = _upload(api, data)
        assert status == 422, (case, body)
        (error,) = body["errors"]
        assert error["field"] == "archive" and reason in error["message"], (case, error)
        assert str(LIMIT) in error["allowed"]
    status, body = _upload(api, os.urandom(api.settings.max_body_bytes + 1))  # cut off before it is read
    assert status == 413
    assert not (api.settings.artifacts / "code").exists() or not list((api.settings.artifacts / "code").iterdir())
