"""The submit fast path seen from outside: raw HTTP/1.1 to two real gunicorns, one serving the
API as deployed (``app.middleware.submit_dispatch`` and ``app.api.fast_submit`` on), the other
the same API with the fast path off (``tests.utils.fast_path_off``), each on its own database of
one real redis-server, a real Celery worker behind the first.

Every generated request (method, path and query variants, Content-Type, framing, Idempotency-Key,
credentials, Host, bodies valid and broken) goes to both, in the same order, so idempotent
replays and conflicts happen alike. Their answers must agree: status, the headers a client acts
on, and the body, the new task's id aside. Every task either accepts can be read back, and the
worker runs a few of those the fast path accepted to the result they asked for.
``tests/api/test_fast_submit.py`` compares the two paths in-process, byte for byte; this sees
what only a real server shows (its HTTP parser, chunked bodies, raw header bytes, kept-alive
connections). Every error the app answers must also be a documented status with a JSON body
saying what is wrong: it found a 500 (a lone surrogate quoted in a 422) and an undocumented 400
(a body nested past the JSON parser's limit).

``make test`` runs a few seconds' worth; ``make fuzz`` sets ``COURIER_FUZZ_EXAMPLES``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.client
import io
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.routing import iter_route_contexts
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from app.api.fast_submit import FastSubmitRoute, HandOver
from app.idempotency import MAX_KEY_LENGTH
from app.main import create_app
from tests.utils import fast_path_off, processes

KEY = "outsider-key-0123456789"
AUTH = (b"x-api-key", KEY.encode())
MAX_PAYLOAD_BYTES = 8192
HOST = b"courier.test"
# What a client acts on; the rest (date, server) is the HTTP server's and the same on both.
# Not Content-Length: the bodies are compared, and one naming its server's port (a URL made
# without a usable Host) is as long as the port's digits.
COMPARED = (
    "content-type", "location", "retry-after", "idempotent-replayed", "www-authenticate",
    "allow", "transfer-encoding",
)  # fmt: skip
READY_TIMEOUT = 60.0
# A few seconds' worth in ``make test``; ``make fuzz`` sets thousands.
EXAMPLES = int(os.environ.get("COURIER_FUZZ_EXAMPLES", "150"))


@dataclass
class Servers:
    fast: int  # ports
    full: int
    accepted: list[tuple[str, Any]] = field(default_factory=list)  # noop ids and echoes


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """Both APIs, one gunicorn worker each (so the dispatch that learnt the submit paths is the
    one every request meets), each on a database of its own so that each sees the same
    Idempotency-Keys as if alone; the worker behind the fast path's."""
    tmp = tmp_path_factory.mktemp("outsider")
    fast, full, metrics = processes.free_port(), processes.free_port(), processes.free_port()
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(processes.RedisServer(tmp / "redis"))
        common = {
            "COURIER_API_KEYS": KEY,
            "COURIER_API_WORKERS": "1",
            "COURIER_EMAIL_BACKEND": "console",
            "COURIER_MAX_PAYLOAD_BYTES": str(MAX_PAYLOAD_BYTES),
            "COURIER_METRICS_ENABLED": "false",
        }
        fast_env = {**common, "COURIER_REDIS_URL": f"redis://127.0.0.1:{redis.port}/0"}
        full_env = {**common, "COURIER_REDIS_URL": f"redis://127.0.0.1:{redis.port}/1"}
        api = "tests.utils.fast_path_off:create_app()"
        for env, port, name, app in ((fast_env, fast, "fast", None), (full_env, full, "full", api)):
            bound = processes.courier_env({**env, "COURIER_API_BIND": f"127.0.0.1:{port}"})
            stack.enter_context(processes.gunicorn(bound, tmp / f"{name}.log", app=app))
        worker_env = processes.courier_env(
            {**fast_env, "COURIER_WORKER_METRICS_PORT": str(metrics)}
        )
        stack.enter_context(
            processes.celery_worker(worker_env, tmp / "worker.log", "outsider", concurrency=1)
        )
        for port in (fast, full, metrics):
            ready = f"http://127.0.0.1:{port}/readyz"
            processes.wait_until(functools.partial(processes.http_ok, ready), READY_TIMEOUT, ready)
        yield Servers(fast, full)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class _KeptOpen(io.BufferedReader):
    """The connection's reader, which ``HTTPResponse`` closes once it has read an answer."""

    def close(self) -> None:
        pass


class _Connection:
    """What ``http.client.HTTPResponse`` reads from: one buffered reader for every answer on
    the connection (a reader per answer would swallow the start of the next one)."""

    def __init__(self, sock: socket.socket) -> None:
        self.reader = _KeptOpen(socket.SocketIO(sock, "rb"))

    def makefile(self, *_: Any, **__: Any) -> Any:
        return self.reader


def exchange(port: int, raw: bytes, method: str, count: int = 1) -> list[Answer]:
    """``count`` requests, as bytes, on a connection of their own; the answers as the server
    sent them, as many as it sent before it closed the connection."""
    answers = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(raw)
        connection = _Connection(sock)
        for _ in range(count):
            response = http.client.HTTPResponse(connection, method=method)  # type: ignore[arg-type]
            try:
                response.begin()  # skips a 100 Continue
            except http.client.RemoteDisconnected:
                break
            body = response.read()
            headers = [(name.lower(), value) for name, value in response.getheaders()]
            answers.append(Answer(response.status, headers, body))
    return answers


def answer(port: int, sent: Sent) -> Answer:
    [only] = exchange(port, sent.raw(), sent.method)
    return only


@dataclass(frozen=True)
class Sent:
    """A request as it goes on the wire: ``chunks`` 0 frames the body with Content-Length,
    more sends it chunked in that many pieces; a body of None sends neither header.
    ``times``: sent so often on one kept-alive connection."""

    method: str
    target: str
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes | None
    chunks: int = 0
    times: int = 1

    def raw(self) -> bytes:
        return b"".join(self.one(last=i == self.times - 1) for i in range(self.times))

    def one(self, last: bool) -> bytes:
        lines = [f"{self.method} {self.target} HTTP/1.1".encode("latin-1")]
        lines += [name + b": " + value for name, value in self.headers]
        framed = b""
        if self.body is not None and self.chunks == 0:
            lines.append(b"content-length: %d" % len(self.body))
            framed = self.body
        elif self.body is not None:
            lines.append(b"transfer-encoding: chunked")
            size = -(-len(self.body) // self.chunks) or 1
            pieces = [self.body[i : i + size] for i in range(0, len(self.body), size)]
            framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
        if last:
            lines.append(b"connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n" + framed


def comparable(answer: Answer, port: int) -> tuple[int, list[tuple[str, str]], Any]:
    """Status, the compared headers in order, and the body (as JSON when it is JSON), with a
    202's task id masked wherever it appears, and the server's own address (a URL made
    without a usable ``Host`` header names it)."""
    masks = [(f"127.0.0.1:{port}", "<server>")]
    if answer.status == 202:
        masks.append((answer.json()["id"], "<id>"))
    headers = [(name, value) for name, value in answer.headers if name in COMPARED]
    body: Any = answer.body
    for found, mask in masks:
        body = body.replace(found.encode(), mask.encode())
        headers = [(name, value.replace(found, mask)) for name, value in headers]
    with contextlib.suppress(ValueError):
        body = json.loads(body)
    return answer.status, headers, body


# --- what is sent ---------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)
VALID: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "noop": st.fixed_dictionaries({}, optional={"echo": JSON_VALUES, "sleep_seconds": st.just(0)}),
    "send_email": st.fixed_dictionaries(
        {"to": st.just("someone@example.com"), "subject": st.text(min_size=1, max_size=8)}
    ),
    "generate_report": st.fixed_dictionaries(
        {"report_id": st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True),
         "data": st.lists(st.fixed_dictionaries({"a": st.integers(0, 9)}), max_size=2)}
    ),
    "process_image": st.fixed_dictionaries(
        {"image_id": st.just("0" * 32), "width": st.integers(1, 4), "height": st.integers(1, 4)}
    ),
}  # fmt: skip
# One valid payload per task: the first submit to each path, which teaches the dispatch its route.
VALID_EXAMPLES: dict[str, Any] = {
    "noop": {"echo": "warm-up"},
    "send_email": {"to": "someone@example.com", "subject": "warm-up"},
    "generate_report": {"report_id": "warm-up", "data": [{"a": 1}]},
    "process_image": {"image_id": "0" * 32, "width": 1, "height": 1},
}
# Values that break a field: wrong types, out of range, too large for a float or a string.
WRONG: st.SearchStrategy[Any] = st.sampled_from(
    [None, True, -1, "", "x", [], {}, 10**30, -(10**30), 1.5, 86401, "a" * 1000, {"a": [1]}]
)


def _encoded(value: Any, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def bodies(draw: st.DrawFn, task: str) -> bytes | None:
    valid = VALID.get(task, VALID["noop"])
    kind = draw(st.integers(0, 9))
    if kind <= 3:  # valid for its task, as JSON
        return _encoded(draw(valid), draw(st.booleans()))
    if kind == 4:  # a field wrong, missing or one too many
        value = dict(draw(valid))
        name = draw(st.sampled_from([*value, "extra", "to", "echo", "sleep_seconds"]))
        if draw(st.booleans()) and name in value:
            del value[name]
        else:
            value[name] = draw(WRONG)
        return _encoded(value, True)
    if kind == 5:  # any JSON value
        return _encoded(draw(JSON_VALUES), draw(st.booleans()))
    if kind == 6:
        return draw(st.binary(max_size=16))
    if kind == 7:  # valid, then changed on the wire
        text = _encoded(draw(valid), True)
        return draw(
            st.sampled_from(
                [
                    b"\xef\xbb\xbf" + text,  # a UTF-8 BOM
                    text.decode().encode("utf-16"),
                    text.decode().encode("utf-32-le"),
                    b" \r\n\t" + text + b"\n",
                    text[:-1],  # cut short
                    text + b"x",
                    text[:1] + b'"echo": 1, ' + text[1:] if text != b"{}" else b'{"echo": 1}',
                ]
            )
        )
    return draw(
        st.sampled_from(
            [
                None, b"", b" ", b"null", b"[]", b"[1]", b'"noop"', b"0", b"{", b"}",
                b'{"echo": "\xff"}', b'{"echo": "\xed\xa0\x80"}', b'{"echo": "\\ud800"}',
                b'{"echo": 1, "echo": 2}', b'{"sleep_seconds": 0, "sleep_seconds": -1}',
                b'{"echo": NaN}', b'{"echo": -Infinity}', b'{"echo": 1e400}',
                b'{"echo": 1e308}', b'{"echo": -0}', b'{"echo": ' + b"9" * 4301 + b"}",
                b'{"echo": ' + b"9" * 4300 + b"}",
                b'{"echo": ' + b"[" * 32 + b"]" * 32 + b"}",
                b'{"echo": ' + b"[" * 33 + b"]" * 33 + b"}",
                b'{"echo": ' + b"[" * 900 + b"]" * 900 + b"}",
                b'{"echo": ' + b"[" * 2000 + b"]" * 2000 + b"}",
                b'{"echo": ' + b'{"a":' * 1500 + b"1" + b"}" * 1500 + b"}",
                b"[" * 3000,
                b'{"echo": "' + b"x" * MAX_PAYLOAD_BYTES + b'"}',
                b'{"echo": "' + b"x" * (MAX_PAYLOAD_BYTES - 12) + b'"}',
            ]
        )
    )  # fmt: skip


NAMES = ["noop", "send_email", "generate_report", "process_image"]
PATHS = st.sampled_from(
    [
        *[f"/v1/tasks/{name}" for name in NAMES] * 4,
        "/v1/tasks/noop/", "/v1/tasks/NOOP", "/v1/tasks/no%6Fp", "/v1/tasks/send%5Femail",
        "/v1/tasks/%6e%6f%6f%70", "/v1/tasks/nope", "/v1/tasks/%E2%9C%93", "/v1/tasks/noop%2F",
        "/v1/tasks/noop/x", "/v1/tasks", "/v1/tasks/", "//v1/tasks/noop", "/V1/tasks/noop",
        "/v1/tasks/" + "n" * 80,
    ]
)  # fmt: skip
QUERIES = st.sampled_from(
    ["", "", "", "?", "?priority=3", "?priority=12", "?queue=celery", "?queue=nope",
     "?countdown=1e400", "?countdown=-1", "?eta=2000-01-01T00:00:00", "?x=%FF", "?#frag"]
)  # fmt: skip
METHODS = st.sampled_from(["POST"] * 16 + ["GET", "PUT", "DELETE", "post", "HEAD", "OPTIONS"])
CONTENT_TYPES = st.sampled_from(
    [[b"application/json"]] * 6
    + [[], [b""], [b"application/json; charset=utf-8"], [b"application/json;charset=latin-1"],
       [b"Application/JSON"], [b"application/vnd.api+json"], [b"text/plain"],
       [b"application/x-www-form-urlencoded"], [b"multipart/form-data; boundary=x"],
       [b"application/json", b"text/plain"], [b"text/plain", b"application/json"],
       [b"application/jsonx"], [b"application/json "]]
)  # fmt: skip
IDEMPOTENCY_KEYS = st.sampled_from(
    [None] * 6
    + [b"", b" ", b"k-1", b"k-2", b"k" * MAX_KEY_LENGTH, b"k" * (MAX_KEY_LENGTH + 1),
       "ключ".encode(), b"\xff\xfe", b"tab\tkey", b" padded "]
)  # fmt: skip
CREDENTIALS = st.sampled_from(
    [[AUTH]] * 5
    + [[], [(b"authorization", b"Bearer " + KEY.encode())], [(b"x-api-key", b"wrong")],
       [(b"authorization", b"Bearer wrong")], [(b"authorization", b"Basic " + KEY.encode())],
       [(b"authorization", b"bearer   " + KEY.encode() + b"  ")], [(b"x-api-key", b"")],
       [(b"authorization", b"Bearer"), AUTH], [(b"x-api-key", b"wrong"), AUTH],
       [(b"authorization", b"Bearer " + KEY.encode() + b"\xe9")]]
)  # fmt: skip
HOSTS = st.sampled_from([[HOST]] * 4 + [[b"courier.test:8443"], [b"h\xe9te"], [b"a", b"b"]])
FORWARDED = st.sampled_from([[], [], [(b"x-forwarded-proto", b"https")]])
EXPECT = st.sampled_from([[], [], [], [(b"expect", b"100-continue")]])


@st.composite
def requests(draw: st.DrawFn) -> Sent:
    path = draw(PATHS)
    task = path.rsplit("/", 1)[-1]
    body = draw(bodies(task))
    headers = [(b"host", host) for host in draw(HOSTS)]
    headers += [(b"content-type", value) for value in draw(CONTENT_TYPES)]
    key = draw(IDEMPOTENCY_KEYS)
    if key is not None:
        headers.append((b"idempotency-key", key))
    headers += draw(CREDENTIALS) + draw(FORWARDED) + draw(EXPECT)
    if draw(st.booleans()):  # header names as a client may spell them
        headers = [(name.title(), value) for name, value in headers]
    chunks = draw(st.sampled_from([0, 0, 0, 1, 2, 3]))
    times = draw(st.sampled_from([1, 1, 1, 2]))
    return Sent(draw(METHODS), path + draw(QUERIES), tuple(headers), body, chunks, times)


COMMON = ((b"host", HOST), (b"content-type", b"application/json"), AUTH)


def _common(task: str, body: bytes) -> Sent:
    """The common submit: the one the fast path takes."""
    return Sent("POST", f"/v1/tasks/{task}", COMMON, body)


# What the app answers these requests: the submit routes' documented statuses, FastAPI's 422,
# the router's 404, 405 and 307 (a trailing slash), and 200 for ``GET /v1/tasks``.
ANSWERED = {200, 202, 307, 401, 403, 404, 405, 409, 413, 415, 422}
# uvicorn's answer to what its HTTP parser refuses (a lower-case method, two Host headers):
# the server's, in plain text, before the app sees anything.
UNPARSED = b"Invalid HTTP request received."


def assert_says_what_is_wrong(answer: Answer) -> None:
    """Every error the app answers is one the API documents, as JSON with a ``detail``."""
    if answer.status == 400 and answer.body == UNPARSED:
        return
    assert answer.status in ANSWERED, answer
    if answer.status >= 400 and answer.body:  # HEAD: the headers only
        assert ("content-type", "application/json") in answer.headers, answer
        assert answer.json()["detail"], answer


def _read_back(port: int, task_id: str) -> Answer:
    return answer(port, Sent("GET", f"/v1/tasks/{task_id}", ((b"host", HOST), AUTH), None))


def _compare(servers: Servers, sent: Sent) -> None:
    raw = sent.raw()
    fast = exchange(servers.fast, raw, sent.method, sent.times)
    full = exchange(servers.full, raw, sent.method, sent.times)
    assert [comparable(a, servers.fast) for a in fast] == [
        comparable(a, servers.full) for a in full
    ], (raw[:600], fast, full)
    assert fast, raw[:600]
    for fast_answer, full_answer in zip(fast, full, strict=True):
        assert_says_what_is_wrong(fast_answer)
        if fast_answer.status == 202:
            _check_stored(servers, sent, fast_answer, full_answer)


def _check_stored(servers: Servers, sent: Sent, fast: Answer, full: Answer) -> None:
    """Each server can read its task back; the fast path's plain noops are kept to be run."""
    for port, accepted in ((servers.fast, fast), (servers.full, full)):
        stored = _read_back(port, accepted.json()["id"])
        assert stored.status == 200, (sent, stored)
        assert stored.json()["name"] == accepted.json()["name"]
    keyed = any(name.lower() == b"idempotency-key" for name, _ in sent.headers)
    if fast.json()["name"] == "noop" and "?" not in sent.target and not keyed:
        echo = json.loads(sent.body) if sent.body and sent.body.strip() else None
        servers.accepted.append((fast.json()["id"], (echo or {}).get("echo")))


def test_the_fast_path_answers_every_request_as_fastapi_does(servers: Servers) -> None:
    # The first submit to each path teaches the dispatch its route; later ones take the fast
    # path. Sent to both, so both databases see the same requests.
    for name in NAMES:
        _compare(servers, _common(name, _encoded(VALID_EXAMPLES[name], True)))

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(sent=requests())
    @example(sent=_common("noop", b'{"echo": {"n": [1, 2.5, "\\u00e9"]}}'))
    @example(sent=Sent("POST", "/v1/tasks/noop", COMMON, b'{"echo": "in pieces"}', chunks=2))
    @example(sent=_common("noop", b"null"))
    @example(sent=_common("noop", rb'{"echo": "\ud800"}'))  # was accepted; its status a 500
    @example(sent=_common("process_image", rb'{"echo": "\ud800"}'))  # was a 500
    @example(sent=_common("noop", b'{"echo": ' + b"[" * 2000 + b"]" * 2000 + b"}"))
    @example(sent=_common("noop", b'{"echo": ' + b"[" * 33 + b"]" * 33 + b"}"))
    def compare(sent: Sent) -> None:
        _compare(servers, sent)

    compare()
    # A few of the fast path's tasks run on the worker, to the result they asked for.
    assert len(servers.accepted) >= 3, servers.accepted
    for task_id, echo in servers.accepted[:4]:
        done = processes.wait_until(
            lambda task_id=task_id: (  # type: ignore[misc]
                body
                if (body := _read_back(servers.fast, task_id).json())["status"]
                in {"succeeded", "failed"}
                else None
            ),
            60,
            f"noop task {task_id} to run",
        )
        assert done["status"] == "succeeded", done
        assert done["result"] == echo, done


@pytest.mark.parametrize(
    "nested",
    [b"[" * 2000 + b"]" * 2000, b'{"a":' * 1200 + b"1" + b"}" * 1200],
    ids=["lists", "objects"],
)
def test_a_body_nested_too_deep_to_parse_is_a_422_saying_so(
    servers: Servers, nested: bytes
) -> None:
    """Past Python's recursion limit (~1000 levels) its JSON parser gives up with a
    RecursionError, which FastAPI answered with an undocumented 400 "There was an error
    parsing the body"; nesting past ``COURIER_MAX_PAYLOAD_DEPTH`` is a documented 422."""
    for port in (servers.fast, servers.full):
        refused = answer(port, _common("noop", b'{"echo": ' + nested + b"}"))
        assert refused.status == 422, refused
        [error] = refused.json()["detail"]
        assert error["type"] == "json_invalid", error
        assert "nested too deep" in error["ctx"]["error"], error


def _offered(app: FastAPI) -> HandOver | object:
    """What the noop route's fast path does with a common submit: ``HandOver()`` when it
    declines before reading the body, else the submit's outcome (here an error: no Redis)."""
    routes = (context.original_route for context in iter_route_contexts(app.routes))
    route = next(r for r in routes if isinstance(r, FastSubmitRoute) and r.path.endswith("/noop"))
    assert route.fast_path is not None
    headers = [(b"content-type", b"application/json")]
    scope = {"type": "http", "headers": headers, "query_string": b"", "app": app}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}"}

    async def offer() -> object:
        assert route.fast_path is not None
        try:
            return await route.fast_path(Request(scope, receive))
        except Exception as exc:  # past the body: it went on to the submit's work
            return exc

    return asyncio.run(offer())


def test_the_compared_server_has_the_fast_path_off_and_only_that(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Else the comparison above would compare the fast path with itself."""
    monkeypatch.setenv("COURIER_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    off, on = fast_path_off.create_app(), create_app()
    assert _offered(off) == HandOver()
    assert not isinstance(_offered(on), HandOver)
    assert [type(r) for r in off.routes] == [type(r) for r in on.routes]
    assert len(off.user_middleware) == len(on.user_middleware)
