"""schemathesis against the served OpenAPI document: no 5xx, every response as documented.

The checks are schemathesis's conformance checks; its positive-data check is left out on
purpose, since schema-valid input may still break a business rule (an ETA beyond the
visibility timeout, countdown and eta together, an unknown queue), which is a documented 422.

A few hundred examples in ``make test``; ``make fuzz`` sets ``COURIER_FUZZ_EXAMPLES`` for
10,000. The API runs against a Redis of its own with no worker, so fuzzed tasks (sleeping up to
a day) never reach the suite's shared worker.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from app.main import create_app
from tests.conftest import settings_from
from tests.utils.processes import RedisServer

EXAMPLES = int(os.environ.get("COURIER_FUZZ_EXAMPLES", "25"))
API_KEY = "fuzz-key-0123456789"


@pytest.fixture(scope="module")
def fuzz_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(Path(tmp_path_factory.mktemp("fuzz")) / "redis")
    server.start()
    yield server
    server.stop()


def operations() -> list[tuple[str, str]]:
    document = create_app(settings_from({"COURIER_API_KEYS": API_KEY})).openapi()
    return [
        (method.upper(), path) for path, methods in document["paths"].items() for method in methods
    ]


@pytest.fixture(scope="module")
def api_schema(fuzz_redis: RedisServer) -> schemathesis.BaseSchema:
    app = create_app(
        settings_from({"COURIER_REDIS_URL": fuzz_redis.url, "COURIER_API_KEYS": API_KEY})
    )
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.parametrize(("method", "path"), operations(), ids=lambda v: str(v))
def test_every_operation_answers_as_documented(
    api_schema: schemathesis.BaseSchema, method: str, path: str
) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    def fuzz(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(
            headers={"Authorization": f"Bearer {API_KEY}"},
            checks=[
                checks.not_a_server_error,
                checks.status_code_conformance,
                checks.content_type_conformance,
                checks.response_schema_conformance,
                checks.response_headers_conformance,
            ],
        )

    fuzz()
