"""The periodic reconcile, run by a real worker: a queued task whose message vanished from
Redis (``celery purge``, a deleted list) is failed with MessageLost; every other stays queued.

The worker consumes the default queue only, so the tasks submitted to ``reports`` stay queued with
their messages in Redis, where each test case then removes, moves or keeps them.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
import redis

from tests.conftest import app_state, wait_for_status
from tests.utils.prom import total
from tests.worker.stack import WorkerStack, worker_stack
from worker.celery_config import PRIORITY_STEPS, create_celery_app, restore_interval
from worker.core import reconcile as reconcile_module
from worker.core.names import (
    DEFAULT_QUEUE,
    KOMBU_PRIORITY_SEP,
    KOMBU_UNACKED_KEY,
    RECONCILE_LAST_RUN_KEY,
    TASK_RECORD_KEY,
)
from worker.core.reconcile import Reconciler
from worker.core.records import TaskRecords
from worker.core.redis_client import queue_commands
from worker.core.result_backend import CourierRedisBackend

VISIBILITY_TIMEOUT = 5
STALE_AFTER = VISIBILITY_TIMEOUT + restore_interval(VISIBILITY_TIMEOUT)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerStack]:
    env = {
        "COURIER_QUEUES": f"{DEFAULT_QUEUE},reports",
        "COURIER_BROKER_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
    }
    tmp = tmp_path_factory.mktemp("reconcile")
    with worker_stack(tmp, "reconciler", env, extra_args=(f"--queues={DEFAULT_QUEUE}",)) as stack:
        yield stack


def take_message(client: redis.Redis, queue: str, task_id: str) -> bytes:
    """Remove the task's message from its list, as a purge (or a worker's fetch) does."""
    for raw in client.lrange(queue, 0, -1):
        assert isinstance(raw, bytes)
        if json.loads(raw)["headers"]["id"] == task_id:
            client.lrem(queue, 1, cast(Any, raw))  # bytes: redis-py's stubs say str
            return raw
    raise AssertionError(f"no message of {task_id} in {queue!r}")


def lost_count(stack: WorkerStack) -> float:
    return total(stack.metrics(), "courier_tasks_lost_total", name="noop", queue_name="reports")


def reconcile(stack: WorkerStack) -> dict[str, object]:
    task_id = stack.api.post("/v1/tasks/reconcile_records", json={}).json()["id"]
    done = wait_for_status(stack.api, task_id, timeout=30)
    assert done["status"] == "succeeded", done
    result: dict[str, object] = done["result"]
    return result


def status(stack: WorkerStack, task_id: str) -> dict[str, object]:
    body: dict[str, object] = stack.api.get(f"/v1/tasks/{task_id}").json()
    return body


def test_queued_tasks_whose_message_vanished_are_failed_and_the_others_stay_queued(
    stack: WorkerStack,
) -> None:
    client = stack.redis
    submit: Callable[..., str] = lambda **params: stack.api.post(  # noqa: E731
        "/v1/tasks/noop", json={}, params={"queue": "reports", **params}
    ).json()["id"]
    started = time.monotonic()
    removed, in_list, in_priority_list, held = submit(), submit(), submit(priority=6), submit()
    purged, revoked = submit(priority=3), submit()

    take_message(client, "reports", removed)
    # Deleted with its whole priority list, as `celery purge` deletes every list of a queue.
    client.delete(f"reports{KOMBU_PRIORITY_SEP}3")
    # Fetched by a worker: in kombu's unacked hash (its index score keeps kombu's restore
    # sweep from moving it back to the list during the test).
    message = json.loads(take_message(client, "reports", held))
    tag = str(uuid.uuid4())
    client.hset(KOMBU_UNACKED_KEY, tag, json.dumps([message, "", "reports"]))
    client.zadd(f"{KOMBU_UNACKED_KEY}_index", {tag: time.time() + 3600})
    # Cancelled, then its message gone too: revoked it stays.
    assert stack.api.delete(f"/v1/tasks/{revoked}").status_code == 202
    take_message(client, "reports", revoked)

    time.sleep(max(0.0, STALE_AFTER + 0.5 - (time.monotonic() - started)))
    # Too recent to judge: its message may still be on its way (a countdown, a restore).
    recent = submit()
    take_message(client, "reports", recent)
    before = lost_count(stack)
    stamped_after = time.time()

    result = reconcile(stack)

    assert (result["lost"], result["complete"]) == (2, True)
    for task_id in (removed, purged):
        body = status(stack, task_id)
        assert body["status"] == "failed"
        error = body["error"]
        assert isinstance(error, dict) and error["type"] == "MessageLost"
        assert "vanished from Redis" in error["message"]
        assert "'reports'" in error["message"]
    for task_id in (in_list, in_priority_list, held, recent):
        assert status(stack, task_id)["status"] == "queued"
    assert status(stack, revoked)["status"] == "revoked"
    assert lost_count(stack) == before + 2
    assert float(client.get(RECONCILE_LAST_RUN_KEY) or 0) > stamped_after
    assert stack.logged_errors() == []

    # Nothing lost twice: a second run finds no new loss.
    assert reconcile(stack)["lost"] == 0
    assert lost_count(stack) == before + 2


def test_a_run_over_its_scan_budget_resumes_where_it_stopped(
    stack: WorkerStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each run reads a bounded number of keys; the cursor carries the pass on to the next."""
    monkeypatch.setattr(reconcile_module, "MAX_SCANS_PER_RUN", 1)
    monkeypatch.setattr(reconcile_module, "SCAN_BATCH", 5)
    monkeypatch.setattr(reconcile_module, "LIMBO_GRACE_SECONDS", 0.0)
    records = TaskRecords(stack.redis, 600)
    ids = [str(uuid.uuid4()) for _ in range(20)]
    pipe = stack.redis.pipeline(transaction=True)
    for task_id in ids:
        queue_commands(pipe, records.calls.create_commands(task_id, "noop", "reports"))
        pipe.hset(TASK_RECORD_KEY.format(task_id=task_id), "enqueued_at", time.time() - 3600)
    pipe.execute()
    app = create_celery_app(app_state(stack.api).settings)
    try:
        reconciler = Reconciler(
            records,
            cast(CourierRedisBackend, app.backend),
            PRIORITY_STEPS,
            STALE_AFTER,
            {"noop"},
            ["reports"],
        )
        runs = []
        for _ in range(200):
            runs.append(reconciler.run())
            if runs[-1].complete:
                break
    finally:
        app.close()
    assert len(runs) > 1 and not runs[0].complete and runs[-1].complete
    assert all(run.examined <= 20 for run in runs)  # SCAN's COUNT is a hint: about 5
    assert {status(stack, task_id)["status"] for task_id in ids} == {"failed"}
