"""The API against its own OpenAPI document (schemathesis): no 5xx, and every response as the document declares.

Every operation is fuzzed in-process (ASGI) on a migrated SQLite database holding a few jobs, with an admin
token, on inputs that fit the document and inputs that do not; a bounded, derandomized number of examples each
keeps the whole file under a minute on 2 cores. (schemathesis's pytest plugin does not run under pytest 9, so
each operation's strategy is driven by Hypothesis directly.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from flatmtl.api.app import create_app
from flatmtl.service import queue
from flatmtl.service.db import Database
from flatmtl.service.settings import Settings
from flatmtl.service.specs.submission import parse_spec
from flatmtl.service.tokens import create_token
from tests.service.catalogs import CATALOG

EXAMPLES = {GenerationMode.POSITIVE: 30, GenerationMode.NEGATIVE: 15}
JOB = {"problem": "multi_digits", "model": "mlp", "epochs": 1, "name": "fuzzed"}
DOCUMENT = create_app(Settings(data_dir=Path("unused"))).openapi()
OPERATIONS = [(method.upper(), path) for path, methods in DOCUMENT["paths"].items() for method in methods]
# Inputs outside the document exist only where there are inputs.
CASES = [
    (method, path, mode)
    for method, path in OPERATIONS
    for mode in EXAMPLES
    if mode == GenerationMode.POSITIVE or {"parameters", "requestBody"} & set(DOCUMENT["paths"][path][method.lower()])
]
# A submission is checked against the method catalog and the problem registry too (names, each method's
# hyper-parameters, the sweep space's paths): JSON Schema cannot say which of its valid documents are real jobs,
# so a schema-valid submission may rightly get 422. Every other check applies to it.
SEMANTIC = {("POST", "/v1/jobs")}


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
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(configured))
    schema.config.headers = {"Authorization": f"Bearer {token}"}
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
        case.call_and_validate(excluded_checks=excluded)

    check()
