"""DELETE /v1/queues/{name}/messages: a purge that leaves no status saying ``queued``.

``celery purge`` deletes the lists and leaves every record ``queued`` (until the reconcile calls
the tasks lost); this one revokes each task it removes, in the same script.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import settings_from
from tests.utils.celery_apps import close_app
from tests.utils.processes import RedisServer
from worker.core.names import DEFAULT_QUEUE, KOMBU_PRIORITY_SEP

API_KEY = "purge-test-key"
AUTH = {"X-API-Key": API_KEY}


@pytest.fixture
def api(own_redis: RedisServer) -> Iterator[TestClient]:
    env = {
        "COURIER_REDIS_URL": own_redis.url,
        "COURIER_API_KEYS": API_KEY,
        "COURIER_QUEUES": f"{DEFAULT_QUEUE},reports",
    }
    with TestClient(create_app(settings_from(env)), headers=AUTH) as client:
        yield client


def test_purge_removes_every_waiting_message_and_revokes_each_task(
    api: TestClient, own_redis: RedisServer
) -> None:
    ours = [api.post("/v1/tasks/noop", json={"echo": n}).json()["id"] for n in range(3)]
    ours += [
        api.post("/v1/tasks/noop", json={}, params={"priority": p}).json()["id"] for p in (0, 9)
    ]
    other = api.post("/v1/tasks/noop", json={}, params={"queue": "reports"}).json()["id"]
    stock = Celery("stock", broker=own_redis.url, backend=own_redis.url)
    foreign = stock.send_task("noop", kwargs={}).id  # no Courier record, no queue named
    with redis.Redis.from_url(own_redis.url) as client:
        client.lpush(DEFAULT_QUEUE, "not a message at all")

        response = api.delete(f"/v1/queues/{DEFAULT_QUEUE}/messages")
        assert response.status_code == 200, response.text
        assert response.json() == {"queue": DEFAULT_QUEUE, "removed": 7, "revoked": 6}
        # The queue's list and its priority sub-lists (a plain "celery*" also names results).
        assert client.exists(DEFAULT_QUEUE) == 0
        assert list(client.scan_iter(f"{DEFAULT_QUEUE}{KOMBU_PRIORITY_SEP}*")) == []
        assert client.llen("reports") == 1  # another queue is untouched
    for task_id in ours:
        status = api.get(f"/v1/tasks/{task_id}").json()
        assert status["status"] == "revoked", status
        assert (
            f"purged through DELETE /v1/queues/{DEFAULT_QUEUE}/messages"
            in status["error"]["message"]
        )
    assert api.get(f"/v1/tasks/{other}").json()["status"] == "queued"
    assert str(stock.AsyncResult(foreign).state) == "REVOKED"  # what a stock client reads
    backend: Any = stock.backend  # the Redis backend's get (not in celery-types' Backend)
    assert json.loads(backend.get(f"celery-task-meta-{foreign}"))["task_id"] == foreign
    close_app(stock)
    again = api.delete(f"/v1/queues/{DEFAULT_QUEUE}/messages")
    assert again.json() == {"queue": DEFAULT_QUEUE, "removed": 0, "revoked": 0}


def test_purge_takes_a_long_queue_in_batches(api: TestClient, own_redis: RedisServer) -> None:
    with redis.Redis.from_url(own_redis.url) as client:
        raw = api.post("/v1/tasks/noop", json={}).json()["id"]
        message = client.lindex(DEFAULT_QUEUE, 0)
        assert message is not None and raw.encode() in message
        client.lpush(DEFAULT_QUEUE, *[message] * 1200)  # the same task: revoked once, then finished
    response = api.delete(f"/v1/queues/{DEFAULT_QUEUE}/messages")
    assert response.json() == {"queue": DEFAULT_QUEUE, "removed": 1201, "revoked": 1}


def test_purge_answers_404_for_a_queue_that_is_not_configured(api: TestClient) -> None:
    response = api.delete("/v1/queues/nightly/messages")
    assert response.status_code == 404
    assert "configured queues" in response.json()["detail"]
    assert api.delete(
        f"/v1/queues/{DEFAULT_QUEUE}/messages", headers={"X-API-Key": ""}
    ).status_code in (
        401,
        403,
    )
