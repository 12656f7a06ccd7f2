"""Time limits and terminate, as prefork keeps them, in the inline pool (``worker/pool``).

What both pools must do runs with each: the soft limit reaches the task as
``SoftTimeLimitExceeded``; a task that swallows every Exception is still stopped at its hard
limit; a stock Celery client terminates a running task (the CLI, which has no terminate
option, is in test_revocation). What only the inline pool does: the
same process serves on, a task that will not stop ends the process with its outcome recorded,
and a warm shutdown waits for the running task.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import enqueue as enqueue_on
from tests.conftest import wait_for_status
from tests.utils.processes import (
    POOLS,
    RedisServer,
    celery_worker,
    child_pids,
    courier_env,
    wait_until,
)
from tests.utils.prom import total
from tests.worker.extra_tasks import BLOCKS_INTERRUPTS_TASK, INCLUDE, SWALLOWS_EXCEPTIONS_TASK
from tests.worker.stack import WorkerStack, worker_stack
from worker.celery_config import create_celery_app
from worker.core.names import CELERY_RESULT_KEY, DEFAULT_QUEUE
from worker.core.settings import Settings
from worker.pool import STUCK_EXIT_CODE

SOFT, HARD, GRACE = 1, 2, 1
LIMITS = {
    "COURIER_TASK_SOFT_TIME_LIMIT": str(SOFT),
    "COURIER_TASK_TIME_LIMIT": str(HARD),
    "COURIER_WORKER_POOL_STOP_GRACE_SECONDS": str(GRACE),
}


@pytest.fixture(scope="module", params=POOLS)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerStack]:
    tmp = tmp_path_factory.mktemp("limits")
    with worker_stack(tmp, "limits", LIMITS, extra_args=(INCLUDE,), pool=request.param) as stack:
        yield stack


def enqueue(stack: WorkerStack, name: str, payload: dict[str, object]) -> str:
    return enqueue_on(stack.api, name, payload)


def assert_serves_on(stack: WorkerStack) -> None:
    """The next task runs; in the inline pool, in the worker's own process (no child)."""
    after = stack.api.post("/v1/tasks/noop", json={"echo": "still here"}).json()["id"]
    assert wait_for_status(stack.api, after)["result"] == "still here"
    assert stack.worker.process.poll() is None
    assert len(child_pids(stack.worker.pid)) == (0 if stack.pool == "inline" else 1)


def test_a_task_past_its_soft_limit_fails_with_soft_time_limit_exceeded(
    stack: WorkerStack,
) -> None:
    task_id = stack.api.post("/v1/tasks/noop", json={"sleep_seconds": 10}).json()["id"]
    done = wait_for_status(stack.api, task_id)
    assert (done["status"], done["error"]["type"]) == ("failed", "SoftTimeLimitExceeded")
    # Awaited, not read once: the warning is logged by another thread (prefork: the main
    # process) than the one that stores the failure, so the status can come first.
    warning = f"Soft time limit ({float(SOFT)}s) exceeded for noop[{task_id}]"
    wait_until(lambda: warning in stack.worker.output(), 10, "the soft limit's warning")
    assert_serves_on(stack)


def test_a_task_that_swallows_exceptions_is_stopped_at_its_hard_limit(stack: WorkerStack) -> None:
    task_id = enqueue(stack, SWALLOWS_EXCEPTIONS_TASK, {"seconds": 30})
    done = wait_for_status(stack.api, task_id)
    assert (done["status"], done["error"]["type"]) == ("failed", "TimeLimitExceeded")
    # Awaited: as billiard's on_hard_timeout, the failure is stored before Celery's on_timeout
    # logs the line (worker/pool/inline.py _report_hard_limit).
    line = f"Hard time limit ({float(HARD)}s) exceeded for"
    wait_until(lambda: line in stack.worker.output(), 10, "the hard limit's log line")
    assert_serves_on(stack)
    wait_until(lambda: stack.redis.hlen("unacked") == 0, 10, "the message acknowledged")


def test_a_stock_celery_client_terminates_a_running_task(stack: WorkerStack) -> None:
    """As Flower's terminate does: ``control.revoke(terminate=True)`` from another app.

    The task carries limits of its own (Celery's per-message ``timelimit``), far beyond the
    test: under the module's (soft 1 s) a terminate sent more than a second after the start,
    as on a loaded machine, found the task already failed by its soft limit."""
    client = create_celery_app(Settings(redis_url=stack.redis_url))
    result = client.send_task(
        "noop",
        kwargs={"sleep_seconds": 30},
        queue=DEFAULT_QUEUE,
        soft_time_limit=60,
        time_limit=90,
    )
    wait_until(lambda: result.state == "STARTED", 20, "the task to start")
    replies = client.control.revoke(result.id, terminate=True, reply=True, timeout=5)
    # One reply, though the inline worker's event loop, free again within the 5 s, runs the
    # revoke too (worker/pool/mailbox.py): before, a second said "terminate: tasks unknown".
    assert len(replies or []) == 1 and f"terminate: {result.id}" in str(replies), replies
    wait_until(lambda: str(result.state) == "REVOKED", 10, "the task revoked")
    assert_serves_on(stack)


@contextlib.contextmanager
def own_redis(tmp: Path) -> Iterator[tuple[RedisServer, redis.Redis]]:
    with RedisServer(tmp / "redis") as server:
        client = redis.Redis.from_url(server.url)
        try:
            yield server, client
        finally:
            client.close()


def test_a_task_that_will_not_stop_is_recorded_and_the_worker_exits(tmp_path: Path) -> None:
    """It blocks the pool's signal: the watchdog records the hard limit and ends the process;
    the message, back after the visibility timeout, is skipped by the next worker as finished."""
    with own_redis(tmp_path) as (server, client):
        env = courier_env(
            {**LIMITS, "COURIER_REDIS_URL": server.url, "COURIER_BROKER_VISIBILITY_TIMEOUT": "2"}
        )
        app = create_celery_app(Settings(redis_url=server.url))
        with celery_worker(env, tmp_path / "first.log", "stuck", 1, (INCLUDE,), pool="inline") as w:
            wait_until(lambda: " ready." in w.output(), 60, "the worker")
            result = app.send_task(
                BLOCKS_INTERRUPTS_TASK, kwargs={"seconds": 60}, queue=DEFAULT_QUEUE
            )
            assert w.process.wait(timeout=HARD + GRACE + 20) == STUCK_EXIT_CODE
            log = w.output()
        assert "did not stop within" in log and '"level": "CRITICAL"' in log
        meta = json.loads(client.get(CELERY_RESULT_KEY.format(task_id=result.id)) or b"{}")
        assert (meta["status"], meta["result"]["exc_type"]) == ("FAILURE", "TimeLimitExceeded")
        with celery_worker(env, tmp_path / "next.log", "next", 1, (INCLUDE,), pool="inline") as w:
            # The log line, not the queue, says the message was handled: an empty queue and
            # unacked hash are seen also after the worker fetched the message (and before it
            # read it: seen once under load) or before the message came back.
            skipped = "duplicate delivery of a finished task skipped"
            wait_until(lambda: skipped in w.output(), 30, "the message back and skipped")
            wait_until(lambda: client.hlen("unacked") == 0, 10, "the message acknowledged")
            assert client.llen(DEFAULT_QUEUE) == 0
        assert json.loads(client.get(CELERY_RESULT_KEY.format(task_id=result.id)) or b"{}") == meta


def test_a_warm_shutdown_waits_for_the_running_task(tmp_path: Path) -> None:
    with own_redis(tmp_path) as (server, client):
        env = courier_env({"COURIER_REDIS_URL": server.url})
        app = create_celery_app(Settings(redis_url=server.url))
        with celery_worker(env, tmp_path / "worker.log", "warm", 1, pool="inline") as worker:
            wait_until(lambda: " ready." in worker.output(), 60, "the worker")
            result = app.send_task(
                "noop", kwargs={"sleep_seconds": 2, "echo": "finished"}, queue=DEFAULT_QUEUE
            )
            wait_until(lambda: result.state == "STARTED", 20, "the task to start")
            worker.process.send_signal(signal.SIGTERM)
            assert worker.process.wait(timeout=30) == 0
        assert result.get(timeout=5) == "finished"
        assert client.hlen("unacked") == 0


def test_limits_and_terminates_racing_task_ends_leave_the_worker_serving(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Hard limits and terminates land anywhere around the end of a task (before, inside,
    after its body): every task still ends in a state that says what happened, nothing is left
    unacknowledged, and the same process serves on."""
    tmp = tmp_path_factory.mktemp("races")
    env = {"COURIER_TASK_TIME_LIMITS": json.dumps({"noop": {"hard": 0.05}})}
    # --concurrency=2 as the chart passes it: the inline pool still runs one task at a time.
    with worker_stack(tmp, "races", env, concurrency=2, pool="inline") as stack:
        client = create_celery_app(Settings(redis_url=stack.redis_url))
        rng, ids = random.Random(16), []
        for _ in range(100):
            sleep = rng.choice([0, 0.02, 0.045, 0.05, 0.055, 0.2])
            ids.append(stack.api.post("/v1/tasks/noop", json={"sleep_seconds": sleep}).json()["id"])
            if rng.random() < 0.3:
                client.control.revoke(rng.choice(ids[-3:]), terminate=True)
        outcomes = set()
        for task_id in ids:
            done = wait_for_status(stack.api, task_id, timeout=60)
            outcomes.add((done["status"], (done["error"] or {}).get("type")))
        assert outcomes <= {
            ("succeeded", None),
            ("failed", "TimeLimitExceeded"),
            ("revoked", "TaskRevokedError"),
        }
        assert_serves_on(stack)
        wait_until(lambda: stack.redis.hlen("unacked") == 0, 10, "every message acknowledged")
        wait_until(
            lambda: total(stack.metrics(), "celery_active_process_count") == 1,
            20,
            "one pool process counted, whatever --concurrency says",
        )


def test_a_terminate_is_heard_after_redis_restarts(tmp_path: Path) -> None:
    """The revoke listener's connection comes back with Redis, as the event loop's does."""
    with own_redis(tmp_path) as (server, _):
        env = courier_env({"COURIER_REDIS_URL": server.url})
        app = create_celery_app(Settings(redis_url=server.url))
        with celery_worker(env, tmp_path / "worker.log", "restart", 1, pool="inline") as worker:
            wait_until(lambda: " ready." in worker.output(), 60, "the worker")
            server.stop()
            server.start()

            def served() -> bool:
                with contextlib.suppress(Exception):
                    sent = app.send_task("noop", kwargs={"echo": "back"}, queue=DEFAULT_QUEUE)
                    return bool(sent.get(timeout=5) == "back")
                return False

            wait_until(served, 60, "the worker to serve again")
            # A broadcast sent before the listener subscribed again is not heard (nor by an
            # event loop still reconnecting): it says when it is back.
            back = "revoke listener connected again"
            wait_until(lambda: back in worker.output(), 20, "the listener to connect again")
            running = app.send_task("noop", kwargs={"sleep_seconds": 30}, queue=DEFAULT_QUEUE)
            wait_until(lambda: running.state == "STARTED", 20, "the task to start")
            app.control.revoke(running.id, terminate=True)
            wait_until(lambda: str(running.state) == "REVOKED", 10, "the terminate to be heard")
