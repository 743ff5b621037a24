"""The API against its own OpenAPI document (schemathesis): no 5xx, and every response as the document declares.

Every operation is fuzzed in-process (ASGI) on a migrated SQLite database holding a few jobs, with an admin
token, on inputs that fit the document and inputs that do not; a bounded, derandomized number of examples each
keeps the whole file under a minute on 2 cores. (schemathesis's pytest plugin does not run under pytest 9, so
each operation's strategy is driven by Hypothesis directly.)
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from flatmtl.api.app import create_app
from flatmtl.service import queue
from flatmtl.service.db import Database
from flatmtl.service.settings import Settings
from flatmtl.service.specs.submission import parse_spec
from flatmtl.service.tokens import create_token
from tests.service.catalogs import CATALOG

pytestmark = pytest.mark.slow

POSITIVE = GenerationMode.POSITIVE
EXAMPLES = {POSITIVE: 30, GenerationMode.NEGATIVE: 15}
JOB = {"problem": "multi_digits", "model": "mlp", "epochs": 1, "name": "fuzzed"}
DOCUMENT = create_app(Settings(data_dir=Path("unused"))).openapi()
OPERATIONS = [(method.upper(), path) for path, methods in DOCUMENT["paths"].items() for method in methods]


def _structured_inputs(method: str, path: str) -> bool:
    """Whether the operation takes parameters or a JSON body: an upload's bytes have no invalid values."""
    operation = DOCUMENT["paths"][path][method.lower()]
    return "parameters" in operation or "application/json" in operation.get("requestBody", {}).get("content", {})


# Inputs outside the document exist only where there are structured inputs.
CASES = [
    (method, path, mode)
    for method, path in OPERATIONS
    for mode in EXAMPLES
    if mode == GenerationMode.POSITIVE or _structured_inputs(method, path)
]
# A submission is checked against the method catalog and the problem registry too (names, each method's
# hyper-parameters, the sweep space's paths): JSON Schema cannot say which of its valid documents are real jobs,
# so a schema-valid submission may rightly get 422; nor which byte strings are tar.gz archives of plain files.
# Every other check applies to them.
SEMANTIC = {("POST", "/v1/jobs"), ("POST", "/v1/code")}


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Any:
    directory: Path = tmp_path_factory.mktemp("schemathesis")
    configured = Settings(
        data_dir=directory,
        database_url=f"sqlite:///{directory / 'flatmtl.db'}",
        token_secret="schemathesis",
        max_body_bytes=65536,
    )
    database = Database.from_settings(configured)
    database.migrate()
    token = create_token(database, configured.token_key(), "fuzzer", ["admin"])
    for _ in range(3):
        queue.submit(database, parse_spec(JOB, CATALOG), user="fuzzer")
    database.dispose()
    app = create_app(configured)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    schema.config.headers = {"Authorization": f"Bearer {token}"}
    schema.flatmtl_app = app
    # An oversized body is refused before it is parsed, invalid or not: 413 is a rejection too.
    rejection = schema.config.checks.negative_data_rejection
    rejection.expected_statuses = [*rejection.expected_statuses, "413"]
    return schema


def test_every_operation_is_fuzzed() -> None:
    paths = {path for _, path in OPERATIONS}
    assert {"/v1/jobs", "/v1/jobs/{job_id}/cancel", "/v1/methods", "/healthz"} <= paths and len(OPERATIONS) >= 14


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=[f"{m} {p} {mode}" for m, p, mode in CASES])
def test_the_api_conforms_to_its_openapi_document(
    api_schema: Any, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]
    excluded = [positive_data_acceptance] if (method, path) in SEMANTIC else []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES[mode],
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        # Passed explicitly too: schemathesis then knows the credentials are real when an operation has header
        # parameters of its own (Idempotency-Key), and probes without them instead of failing the case.
        case.call_and_validate(headers=api_schema.config.headers, excluded_checks=excluded)

    check()


HOSTILE_TEXT = st.text(
    st.one_of(st.characters(), st.characters(categories=["Cs"]), st.just("\x00")), min_size=1, max_size=12
).filter(lambda text: "\x00" in text or any(0xD800 <= ord(c) <= 0xDFFF for c in text))
"""Strings JSON can carry but no database column can store: lone surrogates (escaped as \\ud800) and NULs."""
STRING_INPUTS = [
    (method, path)
    for method, path in OPERATIONS
    if "{path}" in path
    or any(p["in"] == "query" for p in DOCUMENT["paths"][path][method.lower()].get("parameters", []))
    or "requestBody" in DOCUMENT["paths"][path][method.lower()]
]


def _mutations(case: Any, text: str) -> list[Callable[[], None]]:
    """Ways to put ``text`` into what the case sends: as any string of its path, query or JSON body, or as a new
    value or key of any object of its body (free-form objects such as problem_options take them)."""
    found: list[Callable[[], None]] = []
    sent = (case.path_parameters, case.query, case.body)
    stack = [container for container in sent if isinstance(container, dict | list) and container]
    while stack:
        container = stack.pop()
        if isinstance(container, dict) and container is not case.path_parameters and container is not case.query:
            found.append(functools.partial(container.__setitem__, "note", text))
            found.append(functools.partial(container.__setitem__, text, 1))
        items = container.items() if isinstance(container, dict) else enumerate(container)
        for key, value in list(items):
            if isinstance(value, str):
                found.append(functools.partial(container.__setitem__, key, text))
            elif isinstance(value, dict | list):
                stack.append(value)
    return found


def _send(client: TestClient, case: Any, headers: dict[str, str]) -> Any:
    """The case as raw HTTP: percent-encoded UTF-8 (surrogates kept) in the URL, ASCII-escaped JSON in the body."""
    path = case.path
    for name, value in (case.path_parameters if isinstance(case.path_parameters, dict) else {}).items():
        path = path.replace("{" + name + "}", quote(str(value), safe="", errors="surrogatepass"))
    pairs = [
        (key, item)
        for key, value in (case.query or {}).items()
        for item in (value if isinstance(value, list) else [value])
    ]
    query = "&".join(
        f"{quote(str(k), errors='surrogatepass')}={quote(str(v), safe='', errors='surrogatepass')}" for k, v in pairs
    )
    content = json.dumps(case.body) if isinstance(case.body, dict | list) else None
    sent = headers | ({"content-type": "application/json"} if content is not None else {})
    return client.request(case.method, path + (f"?{query}" if query else ""), content=content, headers=sent)


@pytest.mark.parametrize(("method", "path"), STRING_INPUTS, ids=[f"{m} {p}" for m, p in STRING_INPUTS])
def test_surrogates_and_nuls_in_any_string_get_a_4xx_and_nothing_unreadable_is_stored(
    api_schema: Any, method: str, path: str
) -> None:
    operation = api_schema[path][method]
    headers = dict(api_schema.config.headers)

    with TestClient(api_schema.flatmtl_app) as client:

        @given(
            case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE), text=HOSTILE_TEXT, pick=st.integers(0)
        )
        @settings(
            max_examples=25, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def check(case: Any, text: str, pick: int) -> None:
            if (method, path) == ("POST", "/v1/jobs") and pick % 2:
                # generated submissions are rarely real jobs: half are one that would be stored, with the text in
                # its free-form options (as a value, or as a key)
                options = {"note": text} if pick % 4 == 1 else {text: 1}
                case.body = {"spec": {**JOB, "problem_options": options}, "idempotency_key": f"k{pick}"}
            else:
                mutations = _mutations(case, text)
                if not mutations:
                    return
                mutations[pick % len(mutations)]()
            response = _send(client, case, headers)
            assert response.status_code < 500, response.text
            assert client.get("/v1/jobs", params={"limit": 500}, headers=headers).status_code == 200

        check()
