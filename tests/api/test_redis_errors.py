"""Redis error replies as API answers: a refusal is a 503 that names it, anything else a JSON 500.

Before, any error reply (a full or read-only Redis among them) escaped as a text/plain 500.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import settings_from
from tests.utils.processes import RedisServer, free_port, wait_until
from worker.core.names import TASK_RECORD_KEY


@pytest.fixture
def api(own_redis: RedisServer) -> Iterator[TestClient]:
    settings = settings_from({"COURIER_REDIS_URL": own_redis.url})
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_a_read_only_redis_answers_503_naming_it(api: TestClient, own_redis: RedisServer) -> None:
    with redis.Redis.from_url(own_redis.url) as client:
        client.replicaof("127.0.0.1", free_port())  # a failover left us on a replica
        submit = api.post("/v1/tasks/noop", json={"echo": 1})
        keyed = api.post("/v1/tasks/noop", json={"echo": 1}, headers={"Idempotency-Key": "ro"})
        register = api.post("/users/register", params={"username": "ro", "email": "r@o.example"})
        client.replicaof("NO", "ONE")
    for response in (submit, keyed, register):
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "1"
        assert "read-only replica" in response.json()["detail"]
    assert "the task was not stored" in submit.json()["detail"]
    assert "the task was not stored" in keyed.json()["detail"]
    assert api.post("/v1/tasks/noop", json={"echo": 2}).status_code == 202


def test_an_unexpected_error_reply_is_a_json_500(api: TestClient, own_redis: RedisServer) -> None:
    task_id = api.post("/v1/tasks/noop", json={"echo": 1}).json()["id"]
    with redis.Redis.from_url(own_redis.url) as client:
        key = TASK_RECORD_KEY.format(task_id=task_id)
        client.delete(key)
        client.lpush(key, "not a hash")  # WRONGTYPE for the status read: a bug, not an outage
    response = api.get(f"/v1/tasks/{task_id}")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert "WRONGTYPE" in response.json()["detail"]


def fill_to(client: redis.Redis, fraction: float) -> None:
    """Small writes until Redis holds ``fraction`` of its maxmemory (never past it)."""
    maxmemory = int(str(client.config_get("maxmemory")["maxmemory"]))
    n = 0
    while int(client.info("memory")["used_memory"]) < fraction * maxmemory:
        client.set(f"filler:{n}", b"x" * 65536)
        n += 1


def test_submits_are_refused_above_the_memory_watermark_and_accepted_below_it(
    api: TestClient, own_redis: RedisServer
) -> None:
    """Workers keep the room between the watermark and maxmemory to drain what was accepted:
    above it a submit is a 503 JSON with Retry-After, stored nowhere, and /readyz says why."""
    with redis.Redis.from_url(own_redis.url) as client:
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", used + 4 * 1024 * 1024)
        assert api.post("/v1/tasks/noop", json={}).status_code == 202  # below: accepted
        fill_to(client, 0.95)  # another producer fills Redis past the watermark (0.9)

        accepted = [1]

        def refused() -> dict[str, object] | None:
            # Until the API's next reading of INFO memory (within a second), submits still pass.
            response = api.post("/v1/tasks/noop", json={"echo": "over"})
            accepted.extend([1] if response.status_code == 202 else [])
            return response.json() if response.status_code == 503 else None

        body = wait_until(refused, 10, "submits to be refused above the watermark", 0.05)
        assert "Redis is full" in str(body["detail"]) and "not stored" in str(body["detail"])
        response = api.post("/v1/tasks/noop", json={})
        assert response.headers["Retry-After"] == "5"
        assert response.headers["content-type"] == "application/json"
        ready = api.get("/readyz")
        assert ready.status_code == 503 and "Redis is full" in ready.text
        records = list(client.scan_iter(TASK_RECORD_KEY.format(task_id="*")))
        assert len(records) == len(accepted)  # a refused submit stored nothing
        client.delete(*client.keys("filler:*"))
        wait_until(
            lambda: api.post("/v1/tasks/noop", json={}).status_code == 202,
            10,
            "submits accepted again once Redis has room",
            0.05,
        )


def test_a_redis_filling_fast_is_refused_by_the_watermark_before_it_is_full(
    api: TestClient, own_redis: RedisServer
) -> None:
    """Another producer fills a small Redis at ~40 % of its maxmemory a second (a burst, a
    client looping without pause). The API read INFO memory once a second below 80 %, so a
    reading of 50-80 % could be followed by one past maxmemory: Redis's own OOM refused first,
    leaving the workers no room (seen in the full-Redis chaos scenario: its first 503 was
    Redis's). Now the pace between the last two readings counts: the API polls fast when Redis
    would reach 80 % within two seconds. Four fills, a quarter of the API's reading cycle apart
    (each had even odds of failing before)."""
    with redis.Redis.from_url(own_redis.url) as client:
        for offset in (0.0, 0.25, 0.5, 0.75):
            for key in client.scan_iter("filler:*"):
                client.delete(key)
            client.config_set("maxmemory", 0)
            wait_until(lambda: api.post("/v1/tasks/noop", json={}).status_code == 202, 10, "room")
            used = int(client.info("memory")["used_memory"])
            client.config_set("maxmemory", used + 16 * 1024 * 1024)
            time.sleep(1.5 + offset)  # a slow reading or two of an idle Redis first
            stop, full = threading.Event(), threading.Event()

            def fill(stop: threading.Event, full: threading.Event) -> None:
                n = 0
                while not stop.is_set():
                    try:
                        client.set(f"filler:{n}", b"x" * 65536)
                    except redis.ResponseError:
                        full.set()  # Redis refused: no room left for the workers either
                        return
                    n += 1
                    time.sleep(0.0097)  # ~6.4 MB/s: ~40 % of 16 MB a second

            filler = threading.Thread(target=fill, args=(stop, full), daemon=True)
            filler.start()
            try:

                def first_refusal(full: threading.Event = full) -> tuple[str, bool] | None:
                    response = api.post("/v1/tasks/noop", json={})
                    if response.status_code != 503:
                        return None
                    return str(response.json()["detail"]), full.is_set()

                detail, was_full = wait_until(first_refusal, 30, "a submit refused", 0.02)
            finally:
                stop.set()
                filler.join(10)
            assert "submits are refused above" in detail, (offset, detail)
            assert not was_full, f"Redis was full before the API refused (at {offset}): {detail}"
