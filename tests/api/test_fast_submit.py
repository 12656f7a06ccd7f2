"""The fast submit (``app.api.fast_submit``) answers exactly as FastAPI's own handling would.

Each request goes twice to the same app on a real Redis: once as it comes, where the common
submit takes the fast path, and once with a dependency overridden by itself, which sends every
request through FastAPI's dependency solver and handler. Status, headers (names, values, order)
and body must be the same bytes, but for what is new per request (the task id) or moves with the
clock (a 429's wait).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import fastapi.routing
import pytest
from fastapi import FastAPI, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from pydantic import TypeAdapter

from app.api.fast_submit import FastSubmitRoute
from app.api.json_body import require_json_body
from app.api.routes.tasks import NO_OPTIONS, accepted, accepted_reply, enqueue_options
from app.api.schemas import TaskAccepted
from app.api.security import (
    Forbidden,
    Unauthenticated,
    api_key_header,
    bearer,
    client_identity,
    client_identity_from_headers,
    rate_limited_client,
)
from app.main import create_app
from tests.conftest import settings_from
from tests.utils.processes import RedisServer

KEY = "fast-path-key-0123456789"
GOOD_AUTH = [{"Authorization": f"Bearer {KEY}"}, {"X-API-Key": KEY}]
JSON = {"Content-Type": "application/json"}


def _app(courier_vars: dict[str, str], redis: RedisServer, **extra: str) -> FastAPI:
    env = {**courier_vars, "COURIER_REDIS_URL": redis.url, "COURIER_API_KEYS": KEY, **extra}
    return create_app(settings_from(env))


@pytest.fixture(scope="module")
def fast_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("fast-submit")) as server:
        yield server


@pytest.fixture(scope="module")
def client(courier_vars: dict[str, str], fast_redis: RedisServer) -> Iterator[TestClient]:
    with TestClient(_app(courier_vars, fast_redis)) as test_client:
        yield test_client


def _through_fastapi(client: TestClient, method: str, url: str, **kwargs: Any) -> Any:
    """The same request, answered by FastAPI's solver: the fast path declines any request while
    a dependency is overridden, and this override changes nothing else."""
    app: FastAPI = client.app  # type: ignore[assignment]
    app.dependency_overrides[client_identity] = client_identity
    try:
        return client.request(method, url, **kwargs)
    finally:
        app.dependency_overrides.clear()


def _comparable(response: Any) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, raw headers and body, with a 202's task id and a 429's wait masked."""
    body, headers = response.content, list(response.headers.raw)
    if response.status_code == 202:
        task_id = response.json()["id"].encode()
        body = body.replace(task_id, b"<id>")
        headers = [(name, value.replace(task_id, b"<id>")) for name, value in headers]
    if response.status_code == 429:  # the wait, its rounding and the length it gives the body
        body = re.sub(rb"retry after [0-9.]+ s", b"retry after <wait> s", body)
        moving = {b"retry-after", b"content-length"}
        headers = [(name, b"<n>" if name in moving else value) for name, value in headers]
    return response.status_code, headers, body


def assert_same_answer(client: TestClient, method: str, url: str, **kwargs: Any) -> int:
    fast = client.request(method, url, **kwargs)
    full = _through_fastapi(client, method, url, **kwargs)
    assert _comparable(fast) == _comparable(full), (fast.text, full.text)
    return fast.status_code


NOOP = "/v1/tasks/noop"
CASES: list[tuple[str, str, bytes | list[bytes], int]] = [
    ("a valid payload", NOOP, b'{"echo": {"n": [1, 2]}, "sleep_seconds": 0}', 202),
    ("null, for a task whose fields are all optional", NOOP, b"null", 202),
    ("an empty object", NOOP, b"{}", 202),
    ("an empty body", NOOP, b"", 202),
    ("a field out of range", NOOP, b'{"sleep_seconds": -1}', 422),
    ("an unknown field", NOOP, b'{"sleep": 1}', 422),
    ("a list", NOOP, b"[1, 2]", 422),
    ("a string", NOOP, b'"noop"', 422),
    ("bad JSON", NOOP, b'{"echo": ', 422),
    ("NaN", NOOP, b'{"echo": NaN}', 422),
    ("a float too large", NOOP, b'{"echo": 1e400}', 422),
    ("bytes that are not UTF-8", NOOP, b'{"echo": "\xff"}', 422),
    ("a payload nested too deep", NOOP, b'{"echo": ' + b"[" * 40 + b"]" * 40 + b"}", 422),
    ("a required field missing", "/v1/tasks/send_email", b'{"subject": "s"}', 422),
    ("a valid email", "/v1/tasks/send_email", b'{"to": "a@example.com", "subject": "s"}', 202),
    ("an unknown task", "/v1/tasks/nope", b"{}", 404),
    ("a query option", NOOP + "?priority=3", b"{}", 202),
    ("a bad query option", NOOP + "?priority=12", b"{}", 422),
    ("an oversized body", NOOP, b'{"echo": "' + b"x" * 5000 + b'"}', 413),
    ("a body in pieces", NOOP, [b'{"echo":', b' "pieces"}'], 202),
    ("an oversized body in pieces", NOOP, [b'{"echo": "', b"x" * 5000, b'"}'], 413),
]  # fmt: skip


@pytest.mark.parametrize(("case", "url", "content", "status"), CASES, ids=[c[0] for c in CASES])
def test_fast_path_and_fastapi_answer_alike(
    client: TestClient, case: str, url: str, content: bytes | list[bytes], status: int
) -> None:
    for auth in GOOD_AUTH:
        headers = {**JSON, **auth}
        # A list is sent in pieces (chunked): a generator, made anew for each send.
        fast = client.post(url, headers=headers, content=_sent(content))
        full = _through_fastapi(client, "POST", url, headers=headers, content=_sent(content))
        assert fast.status_code == status, fast.text
        assert _comparable(fast) == _comparable(full), (fast.text, full.text)


def _sent(content: bytes | list[bytes]) -> bytes | Iterator[bytes]:
    return iter(content) if isinstance(content, list) else content


HEADER_CASES: list[tuple[str, dict[str, str], int]] = [
    ("no key", JSON, 401),
    ("a wrong key", {**JSON, "X-API-Key": "wrong"}, 403),
    ("a wrong bearer key", {**JSON, "Authorization": "Bearer wrong"}, 403),
    ("another scheme", {**JSON, "Authorization": f"Basic {KEY}"}, 401),
    ("no content type", {"X-API-Key": KEY}, 415),
    ("text/plain", {"Content-Type": "text/plain", "X-API-Key": KEY}, 415),
    ("a charset", {"Content-Type": "application/json; charset=utf-8", "X-API-Key": KEY}, 202),
    ("a +json type", {"Content-Type": "application/vnd.api+json", "X-API-Key": KEY}, 202),
    ("an Idempotency-Key", {**JSON, "X-API-Key": KEY, "Idempotency-Key": "same-key-1"}, 202),
    ("a bad Idempotency-Key", {**JSON, "X-API-Key": KEY, "Idempotency-Key": "k" * 300}, 422),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "headers", "status"), HEADER_CASES, ids=[c[0] for c in HEADER_CASES]
)
def test_fast_path_and_fastapi_answer_alike_whatever_the_headers(
    client: TestClient, case: str, headers: dict[str, str], status: int
) -> None:
    body = b'{"echo": "headers"}'
    if "Idempotency-Key" in headers:  # both answers then replay the first: the same task
        client.post(NOOP, content=body, headers=headers)
    assert assert_same_answer(client, "POST", NOOP, content=body, headers=headers) == status


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
NOOP_LIKE = st.fixed_dictionaries(
    {}, optional={"echo": JSON_VALUES, "sleep_seconds": JSON_VALUES, "extra": JSON_VALUES}
)
BODIES = (NOOP_LIKE | JSON_VALUES).map(lambda value: json.dumps(value).encode()) | st.binary(
    max_size=24
)
TASKS = st.sampled_from(["noop", "send_email", "generate_report", "process_image"])


@settings(max_examples=80, deadline=None)
@given(task=TASKS, body=BODIES, auth=st.sampled_from(GOOD_AUTH))
def test_any_body_gets_the_same_answer_from_both_paths(
    client: TestClient, task: str, body: bytes, auth: dict[str, str]
) -> None:
    assert_same_answer(client, "POST", f"/v1/tasks/{task}", content=body, headers={**JSON, **auth})


def test_a_rate_limited_submit_gets_the_same_429(
    courier_vars: dict[str, str], tmp_path: Path
) -> None:
    with RedisServer(tmp_path / "redis") as redis_server:
        app = _app(
            courier_vars, redis_server,
            COURIER_RATE_LIMIT_PER_SECOND="0.001", COURIER_RATE_LIMIT_BURST="1",
        )  # fmt: skip
        with TestClient(app) as limited:
            headers = {**JSON, "X-API-Key": KEY}
            assert limited.post(NOOP, content=b"{}", headers=headers).status_code == 202
            assert assert_same_answer(limited, "POST", NOOP, content=b"{}", headers=headers) == 429


def test_redis_down_gets_the_same_503(courier_vars: dict[str, str], tmp_path: Path) -> None:
    headers = {**JSON, "X-API-Key": KEY}
    with (
        RedisServer(tmp_path / "redis") as redis_server,
        TestClient(_app(courier_vars, redis_server)) as down,
    ):
        assert down.post(NOOP, content=b"{}", headers=headers).status_code == 202
        redis_server.stop()
        assert assert_same_answer(down, "POST", NOOP, content=b"{}", headers=headers) == 503


def _functions_called(app: FastAPI, **request: Any) -> set[str]:
    """The functions run in the app's thread while it starts and answers one request."""
    called: set[str] = set()

    def record(frame: FrameType, event: str, _: object) -> None:
        if event == "call":
            called.add(f"{frame.f_code.co_filename}:{frame.f_code.co_name}")

    threading.setprofile(record)
    try:
        with TestClient(app) as fresh:
            assert fresh.post(NOOP, **request).status_code == 202
    finally:
        threading.setprofile(None)
    return called


def test_the_common_submit_skips_the_dependency_solver(
    courier_vars: dict[str, str], fast_redis: RedisServer
) -> None:
    """Otherwise the comparisons above would compare FastAPI with itself."""
    headers = {**JSON, "X-API-Key": KEY}
    solver = "fastapi/dependencies/utils.py:solve_dependencies"
    common = _functions_called(_app(courier_vars, fast_redis), content=b"{}", headers=headers)
    keyed = _functions_called(
        _app(courier_vars, fast_redis),
        content=b"{}",
        headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
    )
    assert not any(name.endswith(solver) for name in common)
    assert any(name.endswith(solver) for name in keyed)


def _calls(dependant: Dependant) -> set[object]:
    found: set[object] = set()
    for dependency in dependant.dependencies:
        found |= {dependency.call, *_calls(dependency)}
    return found


def test_the_fast_path_does_what_every_dependency_of_a_submit_route_does(
    client: TestClient,
) -> None:
    """A dependency added to the tasks router or a submit route would be skipped by the fast
    path: it must be added there too, and to this list."""
    replicated = {
        client_identity, bearer, api_key_header, require_json_body, enqueue_options,
        rate_limited_client,
    }  # fmt: skip
    routes = [
        context
        for context in iter_route_contexts(client.app.routes)  # type: ignore[attr-defined]
        if isinstance(context.original_route, FastSubmitRoute)
    ]
    assert {context.path for context in routes} >= {NOOP, "/v1/tasks/send_email"}
    for context in routes:
        assert _calls(context.dependant) == replicated, context.path


async def _identity_or_refusal(identify: Any, request: Request) -> str:
    try:
        return str(await identify(request))
    except (Unauthenticated, Forbidden) as exc:
        return type(exc).__name__


HEADER_VALUES = st.sampled_from(
    [b"", b" ", b"Bearer", b"Bearer ", b"bearer  " + KEY.encode() + b" ", b"BEARER wrong",
     b"Basic " + KEY.encode(), KEY.encode(), b"Bearer " + KEY.encode(), b"\xe9t\xe9"]
) | st.binary(max_size=12)  # fmt: skip
AUTH_HEADERS = st.lists(
    st.tuples(st.sampled_from([b"authorization", b"x-api-key", b"other"]), HEADER_VALUES),
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(headers=AUTH_HEADERS, keys=st.sampled_from([[KEY], [], ["other-key", KEY]]))
def test_the_fast_identity_is_what_the_security_schemes_give(
    headers: list[tuple[bytes, bytes]], keys: list[str]
) -> None:
    app = FastAPI()
    app.state.api_keys = keys
    scope = {"type": "http", "headers": headers, "app": app, "client": ("10.0.0.1", 5000)}
    request = Request(scope)

    async def schemes(request: Request) -> str:
        return await client_identity(request, await bearer(request), await api_key_header(request))

    async def from_headers(request: Request) -> str:
        return client_identity_from_headers(request)

    assert asyncio.run(_identity_or_refusal(from_headers, request)) == asyncio.run(
        _identity_or_refusal(schemes, request)
    )


def test_the_fast_paths_options_are_what_enqueue_options_gives_without_a_query(
    client: TestClient,
) -> None:
    scope = {"type": "http", "headers": [], "query_string": b"", "app": client.app}
    assert asyncio.run(enqueue_options(Request(scope))) == NO_OPTIONS


HOSTS = [b"testserver", b"example.com:8443", b'quote"d', b"back\\slash", b"h\xe9te", b"tab\there"]


@pytest.mark.parametrize("host", HOSTS)
def test_the_prebuilt_202_is_fastapis_whatever_the_host(client: TestClient, host: bytes) -> None:
    """The 202 is made from a template unless its URL would need escaping in JSON; either way
    it is FastAPI's answer, byte for byte."""
    headers: dict[str, str | bytes] = {**JSON, "X-API-Key": KEY, "Host": host}
    assert assert_same_answer(client, "POST", NOOP, content=b"{}", headers=headers) == 202


def test_the_prebuilt_202_carries_the_trace_as_fastapi_would() -> None:
    """Inside a sampled span: the same body and headers as ``accepted``'s model and headers,
    serialised as FastAPI does."""
    provider = TracerProvider()
    app = FastAPI()
    scope = {
        "type": "http", "method": "POST", "path": NOOP, "root_path": "", "scheme": "http",
        "query_string": b"", "headers": [(b"host", b"api.example")], "app": app,
        "server": ("10.0.0.1", 8000),
    }  # fmt: skip
    request = Request(scope)
    task_id = str(uuid.uuid4())
    with provider.get_tracer("test").start_as_current_span("submit"):
        reply = accepted_reply(request, "noop", task_id)
        sub = Response()
        sub.raw_headers.clear()
        model = accepted(request, sub, "noop", task_id)
    assert reply is not None and model.trace_id is not None
    body = TypeAdapter(TaskAccepted).dump_json(model)
    full = Response(body, 202, media_type="application/json")
    full.raw_headers.extend(sub.raw_headers)
    assert (reply.status_code, reply.raw_headers, reply.body) == (202, full.raw_headers, body)
    assert dict(reply.raw_headers)[b"x-trace-id"] == model.trace_id.encode()


def test_a_known_submit_path_skips_the_router(
    courier_vars: dict[str, str], fast_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first submit to a path goes through FastAPI's router, which names its route; later
    common submits to it go straight to that route's fast path, with the route in the scope
    as the router puts it there (the metrics label requests by it)."""
    headers = {**JSON, "X-API-Key": KEY}
    app = _app(courier_vars, fast_redis)
    routes: list[object] = []
    routed: list[str] = []
    selected = fastapi.routing._IncludedRouter._handle_selected  # an included router's route

    async def counted(self: Any, scope: Any, receive: Any, send: Any) -> None:
        routed.append(scope["path"])
        await selected(self, scope, receive, send)

    monkeypatch.setattr(fastapi.routing._IncludedRouter, "_handle_selected", counted)

    async def spying(scope: Any, receive: Any, send: Any) -> None:
        await app(scope, receive, send)
        if scope["type"] == "http":
            routes.append(scope.get("route"))

    with TestClient(spying) as fresh:
        first = fresh.post(NOOP, content=b"{}", headers=headers)
        second = fresh.post(NOOP, content=b"{}", headers=headers)
        keyed = fresh.post(NOOP, content=b"{}", headers={**headers, "Idempotency-Key": "k-1"})
    assert (first.status_code, second.status_code, keyed.status_code) == (202, 202, 202)
    assert routed == [NOOP, NOOP]  # the first, and the one the fast path declined
    assert isinstance(routes[0], FastSubmitRoute) and routes == [routes[0]] * 3
