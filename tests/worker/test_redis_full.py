"""A worker and a full Redis (maxmemory reached, noeviction), with real processes.

Redis then refuses every write that may grow memory and every MULTI. A running worker must
not die on any of its writes (start stamp, result, acknowledgement, heartbeat, queue gauges),
and a task retried while Redis is full must not be lost: Celery acknowledges a task whose
retry it could not publish.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from app.queue import EnqueueOptions
from tests.conftest import enqueue, wait_for_status
from tests.reliability.chaos import fill_past_maxmemory
from tests.utils.processes import wait_until
from tests.utils.prom import total
from tests.worker.extra_tasks import ALWAYS_TRANSIENT_RETRIES, ALWAYS_TRANSIENT_TASK, INCLUDE
from tests.worker.stack import WorkerStack, worker_stack
from worker.core.names import NOOP_TASK, WORKERS_KEY

MAXMEMORY = ("--maxmemory", "8mb")
EXCESS = 256 * 1024
HEARTBEAT = 0.5


@pytest.fixture
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerStack]:
    tmp = tmp_path_factory.mktemp("redis-full")
    env = {"COURIER_WORKER_HEARTBEAT_SECONDS": str(HEARTBEAT)}
    with worker_stack(tmp, "full", env, extra_args=(INCLUDE,), redis_args=MAXMEMORY) as s:
        yield s


def assert_full(client: redis.Redis) -> None:
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("probe", "x")


def worker_errors(stack: WorkerStack) -> list[str]:
    """Errors logged by the worker, but for a task's own failure (celery.app.trace)."""
    lines = stack.worker.output().splitlines()
    errors = [line for line in lines if '"level": "ERROR"' in line or "CRITICAL" in line]
    return [line for line in errors if '"logger": "celery.app.trace"' not in line]


def test_a_running_worker_finishes_its_tasks_when_redis_becomes_full(
    stack: WorkerStack,
) -> None:
    ids = [enqueue(stack.api, NOOP_TASK, {"echo": n, "sleep_seconds": 0.3}) for n in range(8)]
    wait_for_status(stack.api, ids[0], {"started", "succeeded"}, timeout=30)
    fill_past_maxmemory(stack.redis, EXCESS)
    assert_full(stack.redis)
    filled_at = time.time()
    for task_id in ids:
        done = wait_for_status(stack.api, task_id, timeout=60)
        assert done["status"] == "succeeded", done
        assert done["started_at"] is not None, done
    # Gauges, heartbeat and readiness while full: served, and the worker is still there.
    samples = stack.metrics()
    assert total(samples, "celery_task_succeeded_total", name=NOOP_TASK) == len(ids)
    # The heartbeat still renews the worker's registry entry (its deadline is 3 beats ahead).
    hostname: Any = stack.redis.zrange(WORKERS_KEY, 0, 0)[0]

    def renewed() -> bool:
        return (stack.redis.zscore(WORKERS_KEY, hostname) or 0) > filled_at + 3 * HEARTBEAT

    wait_until(renewed, 30, "a heartbeat while Redis is full")
    assert_full(stack.redis)
    assert stack.worker.process.poll() is None
    assert worker_errors(stack) == []
    # The control queue's bindings are still refreshed (kombu's MULTI was refused: a warning
    # with a traceback every second while full).
    assert "maybe_refresh_binding_expiry" not in stack.worker.output()


def test_a_retry_refused_by_a_full_redis_is_published_and_the_task_finishes(
    stack: WorkerStack,
) -> None:
    # Held by the worker until its countdown (fetched, unacknowledged) while Redis fills up.
    options = EnqueueOptions(countdown=3)
    task_id = enqueue(stack.api, ALWAYS_TRANSIENT_TASK, {}, options)
    wait_until(lambda: stack.redis.hlen("unacked") == 1, 30, "the worker to hold the task")
    fill_past_maxmemory(stack.redis, EXCESS)
    assert_full(stack.redis)
    done = wait_for_status(stack.api, task_id, timeout=60)
    assert done["status"] == "failed", done
    assert done["error"]["type"] == "TransientError", done
    assert done["retries"] == ALWAYS_TRANSIENT_RETRIES, done
    assert done["executions"] == ALWAYS_TRANSIENT_RETRIES + 1, done
    assert_full(stack.redis)
    assert stack.worker.process.poll() is None
    assert worker_errors(stack) == []
