"""schemathesis against the served OpenAPI document: no 5xx, every response as documented.

The checks are schemathesis's conformance checks, and ours that every 4xx is JSON with a
``detail`` saying what is wrong; its positive-data check is left out on purpose, since
schema-valid input may still break a business rule (an ETA beyond the visibility timeout,
countdown and eta together, an unknown queue), which is a documented 422.

Every operation is called in-process; the submit operations also over HTTP, on gunicorn, where
a common submit takes the fast path (``app.middleware.submit_dispatch``) as deployed.

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
from tests.utils import processes
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


def errors_say_what_is_wrong(ctx: Any, response: Any, case: Any) -> None:
    """Every 4xx is JSON with a ``detail``, FastAPI's shape: what a client shows its user."""
    if not 400 <= response.status_code < 500:
        return
    content_type = {name.lower(): value for name, value in response.headers.items()}.get(
        "content-type"
    )
    values = content_type if isinstance(content_type, list) else [content_type]
    if not any(value and value.startswith("application/json") for value in values):
        raise AssertionError(f"a {response.status_code} not in JSON: {values}")
    body = response.json()
    if not (isinstance(body, dict) and body.get("detail")):
        raise AssertionError(f"a {response.status_code} without a detail: {body!r}")


CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
    errors_say_what_is_wrong,
]


def fuzz_operation(operation: Any, base_url: str | None = None) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    def fuzz(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(
            base_url=base_url, headers={"Authorization": f"Bearer {API_KEY}"}, checks=CHECKS
        )

    fuzz()


@pytest.mark.parametrize(("method", "path"), operations(), ids=lambda v: str(v))
def test_every_operation_answers_as_documented(
    api_schema: schemathesis.BaseSchema, method: str, path: str
) -> None:
    fuzz_operation(api_schema[path][method])


@pytest.fixture(scope="module")
def served(fuzz_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API on gunicorn (one worker, so the dispatch that learns the submit paths is the
    one every request meets), against the same Redis; its URL."""
    port = processes.free_port()
    env = {
        "COURIER_REDIS_URL": fuzz_redis.url,
        "COURIER_API_KEYS": API_KEY,
        "COURIER_API_BIND": f"127.0.0.1:{port}",
        "COURIER_API_WORKERS": "1",
    }
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("fuzz-api") / "api.log"
    with processes.gunicorn(processes.courier_env(env), log) as api:
        processes.wait_until(lambda: processes.http_ok(f"{url}/readyz"), 60, f"the API ({api.log})")
        yield url


SUBMITS = [
    path
    for method, path in operations()
    if method == "POST" and path.startswith("/v1/tasks/") and "{" not in path
]


@pytest.fixture(scope="module")
def served_schema(served: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{served}/openapi.json")


@pytest.mark.parametrize("path", SUBMITS)
def test_every_submit_answers_as_documented_over_http_with_the_fast_path_on(
    served: str, served_schema: schemathesis.BaseSchema, path: str
) -> None:
    fuzz_operation(served_schema[path]["POST"], served)
