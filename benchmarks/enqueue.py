"""Fill a queue fast with real Celery protocol-2 messages, and time a worker draining it.

``send_task`` publishes ~2k messages/s from one process (BASELINES.md), so 20,000 would cost
10 s per run before the measurement even starts. Instead one message is published by the real
app, taken back from Redis as a template, and cloned with fresh ids in pipelined LPUSHes: the
worker receives exactly what Celery would have sent.
"""

from __future__ import annotations

import base64
import copy
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery

from benchmarks.procs import log

# kombu's Redis transport: one list per priority step, plus the unacked hash of late acks.
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
UNACKED = "unacked"


def queue_keys(queue: str) -> list[str]:
    return [queue if step == 0 else f"{queue}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS]


def backlog(client: redis.Redis, queue: str) -> int:
    """Waiting plus delivered-but-unacknowledged messages: zero only when all work is done."""
    pipe = client.pipeline(transaction=False)
    for key in queue_keys(queue):
        pipe.llen(key)
    pipe.hlen(UNACKED)
    return sum(int(n) for n in pipe.execute())


def capture_template(app: Celery, client: redis.Redis, queue: str) -> dict[str, Any]:
    """Publish one real message to an empty queue and take it back as the template."""
    for key in queue_keys(queue):
        client.delete(key)
    app.send_task("noop", kwargs={"echo": 0, "sleep_seconds": 0}, queue=queue)
    raw = client.rpop(queue)
    if not isinstance(raw, bytes):
        raise RuntimeError(f"template message not found in {queue!r}")
    template: dict[str, Any] = json.loads(raw)
    return template


def clone(
    template: dict[str, Any], echo: Any, sleep_seconds: float, traceparent: str | None = None
) -> bytes:
    message = copy.deepcopy(template)
    task_id = str(uuid.uuid4())
    if traceparent is not None:  # what a traced producer (the API) puts in the headers
        message["headers"]["traceparent"] = traceparent
    message["headers"]["id"] = task_id
    message["headers"]["root_id"] = task_id
    message["headers"]["kwargsrepr"] = repr({"echo": echo, "sleep_seconds": sleep_seconds})
    message["properties"]["correlation_id"] = task_id
    message["properties"]["delivery_tag"] = str(uuid.uuid4())
    body = [[], {"echo": echo, "sleep_seconds": sleep_seconds}, _embed(template)]
    message["body"] = base64.b64encode(json.dumps(body).encode()).decode()
    return json.dumps(message).encode()


def _embed(template: dict[str, Any]) -> Any:
    return json.loads(base64.b64decode(template["body"]))[2]


def enqueue_raw(
    template: dict[str, Any],
    client: redis.Redis,
    queue: str,
    count: int,
    sleep_seconds: float = 0.0,
    first_echo: int = 0,
    traceparent: Callable[[], str] | None = None,
) -> None:
    """LPUSH ``count`` clones (echo = a running integer) in pipelined batches."""
    batch = 1000
    for start in range(0, count, batch):
        messages = [
            clone(template, first_echo + i, sleep_seconds, traceparent and traceparent())
            for i in range(start, min(count, start + batch))
        ]
        client.lpush(queue, *messages)


@dataclass
class Drain:
    tasks: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds


def time_drain(client: redis.Redis, queue: str, total: int, timeout: float) -> Drain:
    """From the first message taken to the last acknowledged, polled every 5 ms.

    The worker is started with the queue already full; its start-up is excluded by waiting for
    the first message to leave the list.
    """
    deadline = time.monotonic() + timeout
    while backlog_waiting(client, queue) >= total:
        if time.monotonic() > deadline:
            raise TimeoutError("the worker never took a message")
        time.sleep(0.005)
    start = time.monotonic()
    next_report = start + 5
    while (left := backlog(client, queue)) > 0:
        now = time.monotonic()
        if now > deadline:
            raise TimeoutError(f"drain incomplete: {left} of {total} left")
        if now > next_report:
            log(f"  ... {total - left}/{total} done")
            next_report = now + 5
        time.sleep(0.005)
    return Drain(total, time.monotonic() - start)


def backlog_waiting(client: redis.Redis, queue: str) -> int:
    pipe = client.pipeline(transaction=False)
    for key in queue_keys(queue):
        pipe.llen(key)
    return sum(int(n) for n in pipe.execute())
