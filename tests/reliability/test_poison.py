"""Poison messages never block the queue: undecodable, unknown, invalid, over the time limit."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import enqueue, settings_from, wait_for_status
from tests.utils.messages import envelope
from tests.utils.processes import (
    POOLS,
    RedisServer,
    Service,
    celery_worker,
    courier_env,
    free_port,
    wait_until,
)
from tests.utils.prom import label_values, scrape, total
from worker.celery_config import create_celery_app
from worker.core.names import DEFAULT_QUEUE


@dataclass
class PoisonStack:
    api: TestClient
    celery: Celery
    redis: redis.Redis
    worker: Service
    metrics_url: str


@pytest.fixture(scope="module", params=POOLS)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PoisonStack]:
    tmp = tmp_path_factory.mktemp("poison")
    port = str(free_port())
    with contextlib.ExitStack() as processes:
        server = processes.enter_context(RedisServer(tmp / "redis"))
        env = {
            "COURIER_REDIS_URL": server.url,
            "COURIER_TASK_TIME_LIMITS": json.dumps({"noop": {"hard": 1.5}}),
            "COURIER_WORKER_METRICS_PORT": port,
        }
        worker = processes.enter_context(
            celery_worker(
                courier_env(env),
                Path(tmp / "worker.log"),
                "poison",
                concurrency=1,
                pool=request.param,
            )
        )
        settings = settings_from(env)
        api = processes.enter_context(TestClient(create_app(settings)))
        warm = api.post("/v1/tasks/noop", json={}).json()["id"]
        wait_for_status(api, warm, timeout=60)
        client = redis.Redis.from_url(server.url)
        processes.callback(client.close)
        yield PoisonStack(
            api, create_celery_app(settings), client, worker, f"http://127.0.0.1:{port}/metrics"
        )


def queue_is_drained(client: redis.Redis) -> bool:
    return client.llen(DEFAULT_QUEUE) == 0 and client.hlen("unacked") == 0


def test_an_undecodable_message_is_dropped_logged_and_does_not_block(stack: PoisonStack) -> None:
    with stack.celery.connection_for_write() as connection:
        channel: Any = connection.default_channel  # kombu's virtual channel (typed StdChannel)
        channel.basic_publish(
            channel.prepare_message(
                "{this is not json",
                content_type="application/json",
                content_encoding="utf-8",
                headers={"task": "noop", "id": str(uuid.uuid4()), "lang": "py"},
            ),
            exchange=DEFAULT_QUEUE,
            routing_key=DEFAULT_QUEUE,
        )
    after = stack.api.post("/v1/tasks/noop", json={"echo": "after poison"}).json()["id"]
    assert wait_for_status(stack.api, after)["result"] == "after poison"
    wait_until(lambda: queue_is_drained(stack.redis), 10, "the poison message to be gone")
    assert "decode" in stack.worker.output().lower()


def rejected(stack: PoisonStack, **labels: str) -> float:
    return total(scrape(stack.metrics_url), "celery_task_rejected_total", **labels)


def test_an_unknown_task_is_rejected_and_counted(stack: PoisonStack) -> None:
    before = rejected(stack, name="unknown", queue_name=DEFAULT_QUEUE)
    stack.celery.send_task("no.such.task", kwargs={}, queue=DEFAULT_QUEUE)
    after = stack.api.post("/v1/tasks/noop", json={"echo": "after unknown"}).json()["id"]
    assert wait_for_status(stack.api, after)["result"] == "after unknown"
    wait_until(lambda: queue_is_drained(stack.redis), 10, "the unknown task to be gone")
    assert "no.such.task" in stack.worker.output()
    # The producer's task name is not a label value: it would be one new series per name.
    wait_until(
        lambda: rejected(stack, name="unknown", queue_name=DEFAULT_QUEUE) == before + 1,
        10,
        "the rejection to be counted",
        0.2,
    )
    names = label_values(scrape(stack.metrics_url), "celery_task_rejected_total", "name")
    assert "no.such.task" not in names


def test_a_message_without_a_task_is_rejected_and_counted_under_bounded_labels(
    stack: PoisonStack,
) -> None:
    """Headers and routing key are the producer's: neither becomes a label value as it is."""
    routing_key = f"made-up-{uuid.uuid4().hex}"
    message = envelope([[], {}, {}], headers={"id": str(uuid.uuid4())})
    del message["headers"]["task"], message["headers"]["lang"]
    message["properties"]["delivery_info"]["routing_key"] = routing_key
    before = rejected(stack, name="unknown", queue_name="unknown")
    stack.redis.lpush(DEFAULT_QUEUE, json.dumps(message))
    wait_until(
        lambda: rejected(stack, name="unknown", queue_name="unknown") == before + 1,
        20,
        "the rejection to be counted",
        0.2,
    )
    wait_until(lambda: queue_is_drained(stack.redis), 10, "the message to be gone")
    queues = label_values(scrape(stack.metrics_url), "celery_task_rejected_total", "queue_name")
    assert routing_key not in queues


def test_a_payload_the_worker_cannot_validate_fails_without_retry(stack: PoisonStack) -> None:
    # Bypass the API's validation: the producer's own path (record + message), with a payload
    # no submit route would have let through.
    task_id = enqueue(stack.api, "noop", {"sleep_seconds": "soon"})
    done = wait_for_status(stack.api, task_id)
    assert done["status"] == "failed"
    assert done["error"]["type"] == "InvalidPayload"
    assert "sleep_seconds" in done["error"]["message"]
    assert done["retries"] == 0


def test_a_task_over_its_hard_time_limit_is_killed_reported_failed_and_the_worker_serves_on(
    stack: PoisonStack,
) -> None:
    slow = stack.api.post("/v1/tasks/noop", json={"sleep_seconds": 10}).json()["id"]
    done = wait_for_status(stack.api, slow, timeout=20)
    assert done["status"] == "failed"
    assert done["error"]["type"] == "TimeLimitExceeded"
    after = stack.api.post("/v1/tasks/noop", json={"echo": "still here"}).json()["id"]
    assert wait_for_status(stack.api, after)["result"] == "still here"
    wait_until(lambda: queue_is_drained(stack.redis), 10, "nothing redelivered")
    samples = scrape(stack.metrics_url)
    assert total(samples, "celery_task_failed_total", name="noop") >= 1
