"""Auth on every mutating route, and the error contract: 422 names the field, 413, 404/409 reasons, OpenAPI."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from flatmtl.api.app import create_app
from flatmtl.service.settings import Settings
from flatmtl.service.tokens import Principal, TokenCache, revoke_token
from tests.api.conftest import Api, make_api
from tests.api.test_jobs_api import SWEEP, TRAIN, submit

TEN_MB = 10 * 1024 * 1024


def mutating_routes(job_id: int) -> list[tuple[str, dict[str, Any] | None]]:
    return [("/v1/jobs", {"spec": TRAIN}), (f"/v1/jobs/{job_id}/cancel", None), (f"/v1/jobs/{job_id}/retry", None)]


def test_every_mutating_route_refuses_missing_wrong_and_unscoped_tokens(api: Api) -> None:
    job = submit(api)
    for path, body in mutating_routes(job["id"]):
        cases = {
            "none": ({}, 401),
            "wrong": ({"Authorization": "Bearer fmtl_not-a-real-token"}, 401),
            "malformed": ({"Authorization": "Token abc"}, 401),
            "read-only": (api.as_user("reader"), 403),
        }
        for case, (headers, status) in cases.items():
            response = api.client.post(path, json=body, headers=headers)
            assert response.status_code == status, (path, case, response.text)
            assert response.json()["code"] == ("unauthorized" if status == 401 else "forbidden")
            if status == 401:
                assert response.headers["www-authenticate"] == "Bearer"
    assert api.client.get(f"/v1/jobs/{job['id']}", headers=api.as_user("auditor")).json()["state"] == "queued"


def test_only_the_owner_or_an_admin_changes_a_job(api: Api) -> None:
    job = submit(api, user="alice")
    refused = api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=api.as_user("bob"))
    assert refused.status_code == 403 and "belongs to 'alice'" in refused.json()["message"]
    assert api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=api.as_user("root")).json()["state"] == "cancelled"


def test_reads_need_a_token_unless_opened(api: Api, database_url: str, tmp_path: Path) -> None:
    assert api.client.get("/v1/jobs").status_code == 401
    assert api.client.get("/v1/methods").status_code == 401
    opened: Iterator[Api] = make_api(database_url, tmp_path / "open", reads_open=True)
    open_api = next(opened)
    try:
        assert open_api.client.get("/v1/jobs").status_code == 200
        assert open_api.client.post("/v1/jobs", json={"spec": TRAIN}).status_code == 401
    finally:
        opened.close()


def test_verified_tokens_are_trusted_for_the_ttl_only(api: Api) -> None:
    """A revocation made elsewhere (the CLI) takes effect once the cached verification expires."""
    now = [100.0]
    cache = TokenCache(api.db, api.settings.token_key(), ttl_s=5.0, clock=lambda: now[0])
    token = api.tokens["alice"]
    assert cache.cached(token) is None
    assert cache.verify(token) == cache.cached(token) == Principal("alice", frozenset({"read", "submit"}))
    assert cache.verify("fmtl_guess") is None and cache.cached("fmtl_guess") is None
    revoke_token(api.db, token[:11])
    now[0] += 4.9
    assert cache.cached(token) is not None
    now[0] += 0.2
    assert cache.cached(token) is None and cache.verify(token) is None


def post(api: Api, body: Any) -> dict[str, Any]:
    response = api.client.post("/v1/jobs", json=body, headers=api.as_user("alice"))
    assert response.status_code == 422, response.text
    return response.json()


@pytest.mark.parametrize(
    ("spec", "field", "value", "allowed"),
    [
        (
            {**TRAIN, "method": {"wrapper": "sharpness"}},
            "spec.method.wrapper.name",
            "sharpness",
            "fmtl, none, sam, samo",
        ),
        (
            {**TRAIN, "method": {"wrapper": {"name": "fmtl", "hparams": {"rho": -1}}}},
            "spec.method.wrapper.hparams.rho",
            -1,
            "float in [0, inf)",
        ),
        (
            {**TRAIN, "method": {"wrapper": {"name": "samo", "hparams": {"alpha": 2}}}},
            "spec.method.wrapper.hparams.alpha",
            2,
            "float in [0, 1]",
        ),
        ({**TRAIN, "epochs": 0}, "spec.epochs", 0, ">= 1"),
        (
            {**SWEEP, "space": {"model.depth": {"type": "grid", "values": [1]}}},
            "spec.space['model.depth']",
            "model.depth",
            None,
        ),
        ({**SWEEP, "mode": "lowest"}, "spec.mode", "lowest", "'min' or 'max'"),
        ({"kind": "evaluate", "problem": "x"}, "spec.kind", "evaluate", "train, sweep"),
    ],
)
def test_bad_input_is_422_naming_field_value_and_allowed(
    api: Api, spec: dict[str, Any], field: str, value: Any, allowed: str | None
) -> None:
    body = post(api, {"spec": spec})
    assert body["code"] == "invalid" and len(body["errors"]) == 1
    error = body["errors"][0]
    assert (error["field"], error["value"]) == (field, value)
    assert allowed is None or error["allowed"] == allowed
    assert field in body["message"] and "Traceback" not in str(body)


def test_bad_queries_and_bodies_are_422(api: Api) -> None:
    headers = api.as_user("alice")
    limit = api.client.get("/v1/jobs", params={"limit": 0}, headers=headers).json()
    assert limit["errors"][0]["field"] == "query.limit" and limit["errors"][0]["allowed"] == ">= 1"
    assert api.client.get("/v1/jobs/abc", headers=headers).json()["errors"][0]["field"] == "path.job_id"
    broken = api.client.post("/v1/jobs", content=b"{not json", headers=headers | {"content-type": "application/json"})
    assert broken.status_code == 422 and broken.json()["errors"][0]["message"] == "JSON decode error"
    undecodable = api.client.post(
        "/v1/jobs", content=b"\xff\xfe{", headers=headers | {"content-type": "application/json"}
    )
    assert undecodable.status_code == 422 and undecodable.json()["errors"][0]["allowed"] == "a JSON document"
    assert post(api, {"spec": TRAIN, "priority": 10**6})["errors"][0]["field"] == "priority"


def test_ten_megabyte_bodies_are_413_declared_or_streamed(api: Api) -> None:
    headers = api.as_user("alice") | {"content-type": "application/json"}
    declared = api.client.post("/v1/jobs", content=b" " * TEN_MB, headers=headers)
    assert declared.status_code == 413 and declared.json()["code"] == "payload_too_large"

    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b" " * (1024 * 1024)

    streamed = api.client.post("/v1/jobs", content=chunks(), headers=headers)
    assert streamed.status_code == 413 and "exceeds" in streamed.json()["message"]
    assert api.client.get("/v1/jobs", headers=api.as_user("auditor")).json()["items"] == []


def test_unknown_routes_and_methods_use_the_error_body(api: Api) -> None:
    assert api.client.get("/v2/jobs").json()["code"] == "not_found"
    assert api.client.delete("/v1/jobs", headers=api.as_user("root")).json()["code"] == "method_not_allowed"


def test_openapi_declares_every_error_response(api: Api) -> None:
    document = api.client.get("/openapi.json").json()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            declared = set(operation["responses"])
            assert {"413", "422", "500"} <= declared, (method, path)
            for status in declared - {"200", "201"}:
                schema = operation["responses"][status]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)
            if method == "post" and path != "/v1/code":  # an upload is stored by its digest: nothing conflicts
                assert {"401", "403", "409"} <= declared, path
            if "{job_id}" in path:
                assert "404" in declared, path
            if path.startswith("/v1/"):
                assert {"401", "403"} <= declared, path
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_importing_the_api_loads_neither_torch_nor_ray() -> None:
    code = (
        "import sys, flatmtl.api.app, flatmtl.service.cli, flatmtl.service.queue, flatmtl.service.specs.submission;"
        "flatmtl.api.app.create_app;"
        "loaded = [m for m in ('torch', 'ray') if m in sys.modules];"
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_an_unreachable_database_is_a_503_with_retry_after(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url="postgresql+psycopg://postgres@127.0.0.1:1/flatmtl",  # refuses every connection
        migrate_on_start=False,
        reads_open=True,
        token_secret="test-secret",
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        for path, headers in (("/v1/jobs", {}), ("/v1/jobs", {"Authorization": "Bearer fmtl_unknown"})):
            response = client.get(path, headers=headers)
            assert response.status_code == 503 and response.headers["Retry-After"].isdigit(), response.text
            assert response.json()["code"] == "unavailable" and "database" in response.json()["message"]
        assert client.get("/healthz").status_code == 200
