"""Nothing a message contains stops a worker: malformed messages go to the dead-letter list.

Finding 1 of issue #16, reproduced on the shapes it names: before the screen, a body that is
not Celery's triple or a ``timelimit`` that is not a pair killed the worker at every restart,
other shapes killed it once, and a ``kwargs`` list vanished without a trace. Each shape is
pushed straight onto the queue list, followed by a well-formed task that must succeed in the
same worker process; the poison is then on the dead-letter list with its reason, counted, and
the task it named (when it carried an id) reads ``failed`` with ``DeadLettered``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from app.main import create_app
from tests.conftest import app_state, settings_from, wait_for_status
from tests.utils.celery_apps import close_app
from tests.utils.messages import MALFORMED, envelope
from tests.utils.processes import (
    RedisServer,
    Service,
    celery_worker,
    courier_env,
    free_port,
    wait_until,
)
from tests.utils.prom import scrape, total
from tests.worker.extra_tasks import ALWAYS_TRANSIENT_TASK, INCLUDE
from worker.core.dead_letters import DeadLetterCalls
from worker.core.envelope import Unfit
from worker.core.names import DEAD_LETTERS_INDEX_KEY, DEFAULT_QUEUE, TASK_RECORD_KEY

API_KEY = "dead-letter-test-key"
AUTH = {"X-API-Key": API_KEY}


@dataclass
class Stack:
    api: TestClient
    redis: redis.Redis
    worker: Service
    metrics_url: str
    env: dict[str, str]
    tmp: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("dead-letters")
    port = str(free_port())
    with contextlib.ExitStack() as processes:
        server = processes.enter_context(RedisServer(tmp / "redis"))
        env = {
            "COURIER_REDIS_URL": server.url,
            "COURIER_API_KEYS": API_KEY,
            "COURIER_WORKER_METRICS_PORT": port,
        }
        worker = celery_worker(courier_env(env), tmp / "worker.log", "dead", concurrency=1)
        # Authenticated by default; the auth test takes the key away.
        api = processes.enter_context(TestClient(create_app(settings_from(env)), headers=AUTH))
        client = redis.Redis.from_url(server.url)
        processes.callback(client.close)
        built = Stack(api, client, worker, f"http://127.0.0.1:{port}/metrics", env, tmp)
        processes.callback(lambda: built.worker.stop())  # the one running then (see below)
        wait_for_status(api, submit_noop(built, "warm"), timeout=60)
        yield built


def dead_letters(stack: Stack) -> list[dict[str, Any]]:
    response = stack.api.get("/v1/dead-letters", params={"limit": 1000})
    assert response.status_code == 200, response.text
    letters: list[dict[str, Any]] = response.json()["dead_letters"]
    return letters


def submit_noop(stack: Stack, echo: str) -> str:
    response = stack.api.post("/v1/tasks/noop", json={"echo": echo})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def push_then_run(stack: Stack, raw: bytes | str) -> None:
    """Poison first, then a good task: the good one must succeed in the same worker."""
    pid = stack.worker.pid
    stack.redis.lpush(DEFAULT_QUEUE, raw)
    after = submit_noop(stack, "after poison")
    assert wait_for_status(stack.api, after)["result"] == "after poison"
    assert stack.worker.process.poll() is None, stack.worker.output()[-3000:]
    assert stack.worker.pid == pid


def dead_lettered(stack: Stack, raw: bytes | str) -> dict[str, Any]:
    wanted = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
    found = [letter for letter in dead_letters(stack) if letter["raw"] == wanted]
    assert len(found) == 1, [letter["detail"] for letter in dead_letters(stack)][:5]
    return found[0]


@contextlib.contextmanager
def stock_client(stack: Stack) -> Iterator[Celery]:
    """Celery as a team's own producer builds it: no Courier code."""
    url = stack.env["COURIER_REDIS_URL"]
    app = Celery("stock", broker=url, backend=url)
    try:
        yield app
    finally:
        close_app(app)


def counted(stack: Stack, reason: str) -> float:
    return total(scrape(stack.metrics_url), "courier_dead_letters_total", reason=reason)


FINDING_1: dict[str, tuple[Callable[[], Any], str]] = {
    "body is a pair, not a triple": (lambda: envelope(body=[[], {}]), "body"),
    "timelimit is not a pair": (lambda: envelope(headers={"timelimit": "oops"}), "headers"),
    "timelimit of one": (lambda: envelope(headers={"timelimit": [1]}), "headers"),
    "body is not JSON": (lambda: envelope(raw_body=base64.b64encode(b"{no").decode()), "body"),
    "body is not base64": (lambda: envelope(raw_body="***not base64***"), "body"),
    "envelope is a JSON array": (lambda: [1, 2, 3], "envelope"),
    "envelope is null": (lambda: None, "envelope"),
    "envelope is not JSON": (lambda: "{this is not json", "envelope"),
    "kwargs is a list": (lambda: envelope(body=[[], ["a"], {}]), "body"),
    "eta is empty": (lambda: envelope(headers={"eta": ""}), "headers"),
    "priority is a string": (
        lambda: envelope(properties={"delivery_tag": str(uuid.uuid4()), "priority": "high"}),
        "envelope",
    ),
}


@pytest.mark.parametrize("shape", sorted(FINDING_1))
def test_a_malformed_message_is_dead_lettered_and_the_queue_goes_on(
    stack: Stack, shape: str
) -> None:
    make, reason = FINDING_1[shape]
    message = make()
    raw = message if isinstance(message, str) else json.dumps(message)
    before = counted(stack, reason)
    push_then_run(stack, raw)
    letter = dead_lettered(stack, raw)
    assert letter["reason"] == reason
    assert letter["queue"] == DEFAULT_QUEUE
    assert letter["detail"]
    # The good task's ack follows its result: nothing is left unacknowledged once it lands.
    wait_until(lambda: stack.redis.hlen("unacked") == 0, 10, "nothing left in unacked")
    wait_until(lambda: counted(stack, reason) == before + 1, 10, "the dead letter counted", 0.2)


def test_the_task_a_dead_letter_names_reads_failed_and_a_stock_client_is_answered(
    stack: Stack,
) -> None:
    """A producer wrote a record, then a message Celery cannot run (kwargs a list): the task
    is failed with DeadLettered instead of reading ``queued`` until the reconcile calls it
    lost, and the result a stock ``AsyncResult.get()`` waits for is there."""
    task_id = str(uuid.uuid4())
    record = TASK_RECORD_KEY.format(task_id=task_id)
    stack.redis.hset(record, mapping={"name": "noop", "queue": DEFAULT_QUEUE, "enqueued_at": 1.0})
    stack.redis.expire(record, 600)
    raw = json.dumps(envelope(body=[[], [1, 2], {}], headers={"id": task_id}))
    push_then_run(stack, raw)
    status = wait_for_status(stack.api, task_id)
    assert status["status"] == "failed"
    assert status["error"]["type"] == "DeadLettered"
    assert "kwargs" in status["error"]["message"]
    with stock_client(stack) as stock:
        result = stock.AsyncResult(task_id)
        assert result.state == "FAILURE"
        with pytest.raises(Exception, match="dead-lettered"):
            result.get(timeout=5, propagate=True)


def test_an_unknown_task_is_kept_and_runs_once_requeued_to_a_worker_that_has_it(
    stack: Stack,
) -> None:
    """The story a requeue is for: a task sent before its code was deployed."""
    task_id = str(uuid.uuid4())
    raw = json.dumps(envelope(headers={"task": ALWAYS_TRANSIENT_TASK, "id": task_id}))
    push_then_run(stack, raw)
    letter = dead_lettered(stack, raw)
    assert letter["reason"] == "unknown_task"
    assert letter["task"] == ALWAYS_TRANSIENT_TASK and letter["task_id"] == task_id
    assert ALWAYS_TRANSIENT_TASK in stack.worker.output()

    # Deploy: a worker that has the task replaces the one that did not.
    stack.worker.stop()
    env = {**courier_env(stack.env), "COURIER_RETRY_BACKOFF_SECONDS": "0.05"}
    with celery_worker(env, stack.tmp / "deployed.log", "deployed", 1, (INCLUDE,)) as deployed:
        response = stack.api.post(f"/v1/dead-letters/{letter['id']}/requeue")
        assert response.status_code == 200, response.text
        assert response.json()["task_id"] == task_id
        assert response.json()["status_url"].endswith(f"/v1/tasks/{task_id}")
        # It ran there: the always-transient task fails after its retries, as that task does.
        with stock_client(stack) as stock:
            result = stock.AsyncResult(task_id)
            wait_until(lambda: result.state == "FAILURE", 60, "the requeued task to run")
            assert type(result.result).__name__ == "TransientError"
        assert deployed.process.poll() is None
    assert stack.api.get(f"/v1/dead-letters/{letter['id']}").status_code == 404
    # The module's worker back for the tests after this one.
    stack.worker = celery_worker(courier_env(stack.env), stack.tmp / "worker2.log", "dead2", 1)
    warm = submit_noop(stack, "warm again")
    wait_for_status(stack.api, warm, timeout=60)


def test_dead_letter_api_lists_newest_first_gets_and_deletes(stack: Stack) -> None:
    raws = [json.dumps(envelope(body=[n])) for n in range(3)]
    for raw in raws:
        push_then_run(stack, raw)
    listed = stack.api.get("/v1/dead-letters", params={"limit": 3}).json()
    assert listed["total"] >= 3
    assert [letter["raw"] for letter in listed["dead_letters"]] == raws[::-1]
    first = listed["dead_letters"][0]
    one = stack.api.get(f"/v1/dead-letters/{first['id']}")
    assert one.status_code == 200 and one.json() == first
    assert one.json()["raw_encoding"] == "utf-8"
    deleted = stack.api.delete(f"/v1/dead-letters/{first['id']}")
    assert deleted.status_code == 204
    again = stack.api.delete(f"/v1/dead-letters/{first['id']}")
    assert again.status_code == 404 and "not found" in again.json()["detail"]
    assert stack.api.get(f"/v1/dead-letters/{first['id']}").status_code == 404
    requeue = stack.api.post(f"/v1/dead-letters/{first['id']}/requeue")
    assert requeue.status_code == 404


def test_dead_letter_api_checks_its_input_and_its_caller(stack: Stack) -> None:
    api = stack.api
    saved = dict(api.headers)
    api.headers.clear()
    try:
        assert api.get("/v1/dead-letters").status_code == 401
        assert api.get("/v1/dead-letters", headers={"X-API-Key": "wrong"}).status_code == 403
        assert api.delete(f"/v1/dead-letters/{'0' * 32}").status_code == 401
        bad_id = api.get("/v1/dead-letters/not-an-id", headers=AUTH)
        assert bad_id.status_code == 422 and "detail" in bad_id.json()
        for params in ({"limit": 0}, {"limit": 1001}, {"offset": -1}, {"limit": "x"}):
            response = api.get("/v1/dead-letters", headers=AUTH, params=params)
            assert response.status_code == 422, params
    finally:
        api.headers.update(saved)


def test_a_binary_message_is_kept_as_base64_byte_for_byte(stack: Stack) -> None:
    raw = b"\xff\xfe binary \x00 garbage"
    push_then_run(stack, raw)
    found = [
        letter
        for letter in dead_letters(stack)
        if letter["raw_encoding"] == "base64" and base64.b64decode(letter["raw"]) == raw
    ]
    assert len(found) == 1
    assert found[0]["reason"] == "envelope" and found[0]["size"] == len(raw)


def test_the_store_is_bounded_in_count_and_bytes(own_redis: RedisServer) -> None:
    """Straight against the store (a real Redis): a flood cannot fill Redis."""
    client = redis.Redis.from_url(own_redis.url)
    store = DeadLetterCalls(max_count=3, max_bytes=300)
    letters = [
        store.add(
            f"message {n}".encode(), Unfit("body", f"bad {n}"), DEFAULT_QUEUE, DEFAULT_QUEUE
        ).run(client)
        for n in range(5)
    ]
    count, kept = store.list(10).run(client)
    assert count == 3
    assert [letter.id for letter in kept] == [letter.id for letter in letters[:1:-1]]
    assert client.hlen("courier:dead-letters") == client.hlen("courier:dead-letters:raw") == 3
    big = store.add(b"x" * 1000, Unfit("body", "big"), DEFAULT_QUEUE, DEFAULT_QUEUE).run(client)
    stored = store.get(big.id).run(client)
    assert stored is not None and stored.truncated and stored.size == 1000
    assert stored.raw == b"x" * 300 and not stored.requeueable
    assert client.zcard(DEAD_LETTERS_INDEX_KEY) == 3
    client.close()


def test_a_cut_dead_letter_cannot_be_requeued(tmp_path: Path, own_redis: RedisServer) -> None:
    env = {
        "COURIER_REDIS_URL": own_redis.url,
        "COURIER_DEAD_LETTER_MAX_BYTES": "256",
    }
    with (
        TestClient(create_app(settings_from(env))) as api,
        redis.Redis.from_url(own_redis.url) as client,
    ):
        calls = app_state(api).dead_letters
        add = calls.add(b"y" * 1000, Unfit("body", "big"), DEFAULT_QUEUE, DEFAULT_QUEUE)
        letter = add.run(client)
        response = api.post(f"/v1/dead-letters/{letter.id}/requeue")
        assert response.status_code == 409
        assert "COURIER_DEAD_LETTER_MAX_BYTES" in response.json()["detail"]


# --- property: whatever a message holds, the next task runs in the same worker ---------------


@settings(
    max_examples=int(os.environ.get("COURIER_POISON_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(raw=MALFORMED)
def test_no_message_stops_the_worker(stack: Stack, raw: bytes) -> None:
    push_then_run(stack, raw)
    assert "Unrecoverable error" not in stack.worker.output()
