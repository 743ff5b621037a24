"""Input a hostile user sends gets a 4xx naming the field, nothing unreadable is committed, and each user reads only
their own jobs (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flatmtl.service import artifacts, queue
from flatmtl.service.telemetry.names import POINT_STEP_SECONDS
from tests.api.conftest import Api
from tests.api.test_jobs_api import SWEEP, TRAIN, submit


def refused(api: Api, body: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """POST ``body`` (a document, or JSON text) and expect 422. JSON escapes lone surrogates (as ``\\ud800``)."""
    content = body if isinstance(body, str) else json.dumps(body)
    headers = api.as_user("alice") | {"content-type": "application/json"} | (headers or {})
    response = api.client.post("/v1/jobs", content=content, headers=headers)
    assert response.status_code == 422, response.text
    return response.json()


def nested(depth: int) -> str:
    """A submission whose problem_options are ``depth`` objects deep, as JSON text (json.dumps would recurse)."""
    options = '{"a":' * depth + "{}" + "}" * depth
    body = json.dumps({"spec": {**TRAIN, "problem_options": {}}})
    return body.replace('"problem_options": {}', f'"problem_options": {options}')


def test_unstorable_strings_and_deep_documents_are_refused_naming_the_field(api: Api) -> None:
    submit(api)  # a readable job on the page: it must stay readable
    cases = {
        "spec.problem_options.note": {"spec": {**TRAIN, "problem_options": {"note": "\ud800"}}},
        "spec.problem_options": {"spec": {**TRAIN, "problem_options": {"\udfff": 1}}},
        "idempotency_key": {"spec": TRAIN, "idempotency_key": "nightly\x00"},
        "spec.name": {"spec": {**TRAIN, "name": "run\x00"}},
    }
    for field, body in cases.items():
        errors = refused(api, body)["errors"]
        assert errors[0]["field"] == field, errors
        assert "NUL" in errors[0]["allowed"], errors
    for depth in (300, 1000):
        error = refused(api, nested(depth))
        assert "nested deeper than 32 levels" in error["message"], error
    listed = api.client.get("/v1/jobs", headers=api.as_user("alice"))
    assert listed.status_code == 200 and len(listed.json()["items"]) == 1
    no_nul = api.client.get("/v1/jobs", params={"name": "x\x00"}, headers=api.as_user("alice"))
    assert no_nul.status_code == 422 and no_nul.json()["errors"][0]["field"] == "query.name"


def test_artifact_paths_with_nul_or_thousands_of_characters_are_4xx(api: Api) -> None:
    job = submit(api)
    (artifacts.job_dir(api.settings.artifacts, job["id"])).mkdir(parents=True)
    for bad in ("report%00.json", "a" * 6000, "%00"):
        response = api.client.get(f"/v1/jobs/{job['id']}/artifacts/{bad}", headers=api.as_user("alice"))
        assert 400 <= response.status_code < 500, (bad[:20], response.text)
        assert response.json()["errors"][0]["field"] == "path.path"


def test_the_idempotency_key_header_works_like_the_body_field(api: Api) -> None:
    first = submit(api, **{})
    keyed = api.client.post("/v1/jobs", json={"spec": TRAIN}, headers=api.as_user("alice") | {"Idempotency-Key": "k1"})
    assert keyed.status_code == 201 and keyed.json()["id"] != first["id"]
    again = api.client.post("/v1/jobs", json={"spec": TRAIN}, headers=api.as_user("alice") | {"Idempotency-Key": "k1"})
    assert again.status_code == 200 and again.json()["id"] == keyed.json()["id"]
    in_body = api.client.post("/v1/jobs", json={"spec": TRAIN, "idempotency_key": "k1"}, headers=api.as_user("alice"))
    assert in_body.status_code == 200 and in_body.json()["id"] == keyed.json()["id"]
    both = refused(api, {"spec": TRAIN, "idempotency_key": "k2"}, {"Idempotency-Key": "k3"})
    assert both["errors"][0]["field"] == "Idempotency-Key" and "k2" in both["errors"][0]["allowed"]


def test_data_paths_must_lie_inside_the_data_roots(api: Api, tmp_path: Path) -> None:
    root = api.settings.allowed_data[0]
    (root / "mnist").mkdir(parents=True, exist_ok=True)
    (root / "escape").symlink_to("/etc")
    for path in ("../../../../etc", "/etc", str(root / ".." / ".." / "etc"), str(root / "escape"), "mnist"):
        error = refused(api, {"spec": {**TRAIN, "problem_options": {"data_dir": path}}})["errors"][0]
        assert error["field"] == "spec.problem_options.data_dir" and error["value"] == path
        assert str(root) in error["allowed"]
    space = {**SWEEP["space"], "problem_options.fashion_dir": {"type": "grid", "values": [str(root), "/root"]}}
    error = refused(api, {"spec": {**SWEEP, "space": space}})["errors"]
    assert [e["field"] for e in error] == ["spec.space['problem_options.fashion_dir'].values[1]"]
    assert submit(api, {**TRAIN, "problem_options": {"data_dir": str(root / "mnist")}})["state"] == "queued"


@pytest.mark.parametrize("reader", ["bob", "reader"])
def test_users_read_only_their_own_jobs_unless_they_read_all(api: Api, reader: str) -> None:
    job = submit(api, user="alice")
    job_dir = artifacts.job_dir(api.settings.artifacts, job["id"])
    job_dir.mkdir(parents=True)
    (job_dir / "summary.json").write_text("{}")
    (job_dir / artifacts.LOG_NAME).write_text("alice's log\n")
    routes = ["", "/events", "/metrics", "/trials", "/logs", "/artifacts", "/artifacts/summary.json"]
    for route in routes:
        hidden = api.client.get(f"/v1/jobs/{job['id']}{route}", headers=api.as_user(reader))
        assert hidden.status_code == 404 and "alice" not in hidden.text, (route, hidden.text)
        for allowed in ("alice", "auditor", "root"):
            assert api.client.get(f"/v1/jobs/{job['id']}{route}", headers=api.as_user(allowed)).status_code == 200
    assert api.client.get("/v1/jobs", headers=api.as_user(reader)).json()["items"] == []
    assert [j["id"] for j in api.client.get("/v1/jobs", headers=api.as_user("auditor")).json()["items"]] == [job["id"]]


def test_a_users_token_sees_only_their_own_jobs_in_the_prometheus_metrics(api: Api) -> None:
    running = {}
    for user in ("alice", "bob"):
        job = submit(api, user=user)
        lease = queue.claim(api.db, "worker", 60)
        assert lease is not None and lease.job_id == job["id"]
        queue.record_metrics(api.db, lease, [(1, POINT_STEP_SECONDS, 0.25)])
        running[user] = f'job_id="{job["id"]}"'

    def scrape(user: str | None) -> str:
        response = api.client.get("/metrics", headers=api.as_user(user) if user else {})
        assert response.status_code == 200, response.text
        return response.text

    for user, other in (("alice", "bob"), ("bob", "alice")):
        assert running[user] in scrape(user) and running[other] not in scrape(user)
    for everyone in (None, "auditor", "root"):
        assert running["alice"] in scrape(everyone) and running["bob"] in scrape(everyone)
