"""Idempotency-Key: one task per key and body, even under 50 concurrent identical requests."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import httpx
import httpx2
import pytest
import redis
from fastapi.testclient import TestClient

from app.idempotency import PENDING_TTL_SECONDS, key_slot, request_fingerprint
from app.main import create_app
from app.queue import EnqueueOptions
from tests.conftest import settings_from, wait_for_status
from tests.utils.processes import (
    RedisServer,
    courier_env,
    free_port,
    gunicorn,
    http_ok,
    wait_until,
)
from tests.utils.prom import scrape, total
from tests.utils.redis_link import RedisLink
from worker.core.names import TASK_RECORD_KEY
from worker.tasks.noop import NoopPayload


def test_a_repeated_key_and_body_returns_the_original_task(live_api: TestClient) -> None:
    headers = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
    first = live_api.post("/v1/tasks/noop", json={"echo": 1}, headers=headers)
    again = live_api.post("/v1/tasks/noop", json={"echo": 1}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert wait_for_status(live_api, first.json()["id"])["result"] == 1


def test_the_same_key_with_another_body_is_409(api: TestClient) -> None:
    headers = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
    assert api.post("/v1/tasks/noop", json={"echo": 1}, headers=headers).status_code == 202
    conflict = api.post("/v1/tasks/noop", json={"echo": 2}, headers=headers)
    assert conflict.status_code == 409
    assert "different request" in conflict.json()["detail"]
    # Options are part of the request too.
    delayed = api.post("/v1/tasks/noop", json={"echo": 1}, params={"countdown": 5}, headers=headers)
    assert delayed.status_code == 409


def test_keys_are_scoped_to_their_task(api: TestClient) -> None:
    headers = {"Idempotency-Key": f"shared-{uuid.uuid4()}"}
    assert api.post("/v1/tasks/noop", json={}, headers=headers).status_code == 202
    other = api.post("/v1/tasks/generate_report", json={"report_id": "r", "data": []},
                     headers=headers)  # fmt: skip
    assert other.status_code == 409  # same key, different request


def test_an_unusable_key_is_422(api: TestClient) -> None:
    response = api.post("/v1/tasks/noop", json={}, headers={"Idempotency-Key": "a\tb"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    too_long = api.post("/v1/tasks/noop", json={}, headers={"Idempotency-Key": "k" * 300})
    assert too_long.status_code == 422


def test_fifty_concurrent_identical_requests_enqueue_once(
    courier_vars: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    env = courier_env({**courier_vars, "COURIER_API_BIND": f"127.0.0.1:{port}",
                       "COURIER_API_WORKERS": "2"})  # fmt: skip
    server = gunicorn(env, tmp_path / "gunicorn.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{url}/readyz"), 30, "gunicorn")
        key = f"burst-{uuid.uuid4()}"

        def sent() -> float:
            return total(scrape(f"{url}/metrics"), "celery_task_sent_total", name="noop")

        before = sent()

        async def burst() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=50)
            async with httpx.AsyncClient(base_url=url, timeout=20, limits=limits) as client:
                return await asyncio.gather(
                    *(
                        client.post(
                            "/v1/tasks/noop",
                            json={"echo": "once"},
                            headers={"Idempotency-Key": key},
                        )
                        for _ in range(50)
                    )
                )

        responses = asyncio.run(burst())
        assert {r.status_code for r in responses} == {202}
        assert len({r.json()["id"] for r in responses}) == 1
        assert sum("Idempotent-Replayed" in r.headers for r in responses) == 49
        assert sent() - before == 1
    finally:
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(30)
        server.stop()


# A killed or cut-off request: the key must say what happened to its task, and never block
# for long. TestClient requests come from "testclient", so the key's client is its address.
TEST_CLIENT = "addr:testclient"
# Stands in for a process killed between claim and publish: the real claim code, an enqueue
# that never returns, then SIGKILL.
CLAIM_AND_HANG = """
import asyncio, sys
import redis.asyncio
from app.idempotency import IdempotentSubmitter

url, client_id, key, fingerprint = sys.argv[1:]

async def hang(*_):
    print("claimed", flush=True)
    await asyncio.sleep(600)

submitter = IdempotentSubmitter(redis.asyncio.Redis.from_url(url))
asyncio.run(submitter.submit(client_id, key, fingerprint, hang))
"""


def noop_fingerprint(echo: str) -> str:
    payload = NoopPayload(echo=echo).model_dump(mode="json")
    return request_fingerprint("noop", payload, asdict(EnqueueOptions()))


def keyed_noop(api: TestClient, key: str, echo: str) -> httpx2.Response:
    return api.post("/v1/tasks/noop", json={"echo": echo}, headers={"Idempotency-Key": key})


def test_a_process_killed_between_claim_and_publish_blocks_its_key_for_seconds(
    api: TestClient, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    key = f"killed-{uuid.uuid4()}"
    args = [redis_server.url, TEST_CLIENT, key, noop_fingerprint("once")]
    holder = subprocess.Popen(
        [sys.executable, "-c", CLAIM_AND_HANG, *args],
        stdout=subprocess.PIPE,
        env=courier_env({}),
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"claimed\n"
    finally:
        holder.kill()
        holder.wait(30)
        if holder.stdout is not None:
            holder.stdout.close()
    slot = key_slot(TEST_CLIENT, key)
    left = json.loads(redis_client.get(slot) or b"{}")
    assert left["state"] == "pending"
    assert 0 < redis_client.ttl(slot) <= PENDING_TTL_SECONDS  # not a day

    retry = keyed_noop(api, key, "once")  # waits the dead claim out, then submits
    assert retry.status_code == 202, retry.text
    task_id = retry.json()["id"]
    assert task_id != left["task_id"]
    assert "Idempotent-Replayed" not in retry.headers
    assert not redis_client.exists(TASK_RECORD_KEY.format(task_id=left["task_id"]))
    again = keyed_noop(api, key, "once")
    assert (again.status_code, again.json()["id"]) == (202, task_id)
    assert again.headers["Idempotent-Replayed"] == "true"


@pytest.fixture
def cut_api(own_redis: RedisServer) -> Iterator[tuple[TestClient, RedisLink]]:
    """An API reaching its own Redis through a link the test can cut at an EXEC."""
    with (
        RedisLink(own_redis.port) as link,
        TestClient(create_app(settings_from({"COURIER_REDIS_URL": link.url}))) as api,
    ):
        assert api.post("/v1/tasks/noop", json={}).status_code == 202  # connections open
        # A keyed submit too: its guarded write is another script than a common submit's, and
        # a first EVALSHA of it would be refused NOSCRIPT and sent again in full, after the cut.
        assert keyed_noop(api, f"warm-{uuid.uuid4()}", "warm").status_code == 202
        yield api, link


def test_redis_lost_right_after_the_enqueue_leaves_the_key_done(
    cut_api: tuple[TestClient, RedisLink], own_redis: RedisServer
) -> None:
    api, link = cut_api
    key = f"cut-after-{uuid.uuid4()}"
    link.fail_at_next_write(deliver=True)
    first = keyed_noop(api, key, "once")
    assert link.failed  # Redis was gone from the instant after the write
    # Before, the done marker was a write of its own after the enqueue: a 503 here, the task
    # queued, and every retry a 409 for a day.
    assert first.status_code == 202, first.text
    task_id = first.json()["id"]
    with redis.Redis.from_url(own_redis.url) as direct:
        marker = json.loads(direct.get(key_slot(TEST_CLIENT, key)) or b"{}")
        assert (marker["state"], marker["task_id"]) == ("done", task_id)
        assert direct.ttl(key_slot(TEST_CLIENT, key)) > PENDING_TTL_SECONDS
        assert direct.exists(TASK_RECORD_KEY.format(task_id=task_id))
    link.restore()
    again = keyed_noop(api, key, "once")
    assert (again.status_code, again.json()["id"]) == (202, task_id)
    assert again.headers["Idempotent-Replayed"] == "true"


def test_redis_lost_with_the_enqueue_leaves_neither_task_nor_marker(
    cut_api: tuple[TestClient, RedisLink], own_redis: RedisServer
) -> None:
    api, link = cut_api
    key = f"cut-before-{uuid.uuid4()}"
    link.fail_at_next_write(deliver=False)
    first = keyed_noop(api, key, "once")
    assert link.failed
    assert first.status_code == 503, first.text
    with redis.Redis.from_url(own_redis.url) as direct:
        claim = json.loads(direct.get(key_slot(TEST_CLIENT, key)) or b"{}")
        assert claim["state"] == "pending"  # what was claimed before Redis went away
        assert 0 < direct.ttl(key_slot(TEST_CLIENT, key)) <= PENDING_TTL_SECONDS
        assert not direct.exists(TASK_RECORD_KEY.format(task_id=claim["task_id"]))
    link.restore()
    retry = keyed_noop(api, key, "once")  # waits the lapsing claim out
    assert retry.status_code == 202, retry.text
    again = keyed_noop(api, key, "once")
    assert (again.status_code, again.json()["id"]) == (202, retry.json()["id"])
