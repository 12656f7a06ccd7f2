"""The inline supervisor (``python -m worker.supervisor``) with real processes: a redis-server,
the supervisor and its Celery children, the API in-process.

Two children consume and share the work (each answers ``celery inspect`` under its own node
name), the pod's ``/metrics`` sums their counters, a crashed child is replaced and the queue
drains on, a child stuck in C code holding the GIL is killed and replaced with its task
recorded, ``/readyz`` follows Redis, and SIGTERM is a warm shutdown of every child. From
outside, with both children busy, Celery's own CLI hears each (``inspect active``) and a stock
client's terminate stops both tasks.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from celery import Celery
from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import enqueue, settings_from, wait_for_status
from tests.utils.processes import (
    RedisServer,
    Service,
    child_pids,
    courier_env,
    free_port,
    http_ok,
    wait_until,
)
from tests.utils.prom import scrape, total
from tests.worker.gil_names import GIL_INCLUDE, HOLDS_GIL_TASK
from worker.celery_config import create_celery_app
from worker.core.names import DEFAULT_QUEUE
from worker.core.settings import Settings
from worker.supervisor import child_argv, parse_worker_args

HARD, GRACE = 2, 1


@dataclass
class Pod:
    api: TestClient
    redis: redis.Redis
    server: RedisServer
    supervisor: Service
    url: str

    def children(self) -> list[int]:
        return child_pids(self.supervisor.pid)

    def readyz(self) -> httpx.Response:
        return httpx.get(f"{self.url}/readyz", timeout=5)

    def submit(self, count: int, sleep: float = 0.0) -> list[str]:
        body = {"sleep_seconds": sleep}
        return [self.api.post("/v1/tasks/noop", json=body).json()["id"] for _ in range(count)]


@contextlib.contextmanager
def pod(tmp: Path, env: Mapping[str, str] | None = None, concurrency: int = 2) -> Iterator[Pod]:
    """Redis, the supervisor as the chart runs it with ``worker.pool: inline``, and the API."""
    with contextlib.ExitStack() as cleanup:
        server = cleanup.enter_context(RedisServer(tmp / "redis"))
        port = free_port()
        variables = {
            "COURIER_REDIS_URL": server.url,
            "COURIER_WORKER_METRICS_PORT": str(port),
            "COURIER_WORKER_POOL": "inline",
            "COURIER_TASK_TIME_LIMIT": str(HARD),
            "COURIER_WORKER_POOL_STOP_GRACE_SECONDS": str(GRACE),
            **(env or {}),
        }
        args = [sys.executable, "-m", "worker.supervisor", "--loglevel=INFO"]
        args += [f"--concurrency={concurrency}", "--without-gossip", "--without-mingle"]
        args += ["-n", "pod@%h", GIL_INCLUDE]
        supervisor = cleanup.enter_context(
            Service(args, courier_env(variables), tmp / "supervisor.log")
        )
        client = redis.Redis.from_url(server.url)
        cleanup.callback(client.close)
        api = cleanup.enter_context(TestClient(create_app(settings_from(variables))))
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_ok(f"{url}/readyz"), 90, "the pod's /readyz")
        yield Pod(api, client, server, supervisor, url)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pod]:
    with pod(tmp_path_factory.mktemp("supervisor")) as running:
        yield running


def test_worker_options_are_passed_on_with_one_process_and_a_node_name_per_child() -> None:
    args = parse_worker_args(["--loglevel=INFO", "-c", "3", "-n", "courier@%h", "-Q", "a,b"])
    assert (args.concurrency, args.name, args.host) == (3, "courier", "%h")
    assert child_argv(args, 2)[1:] == [
        "-m", "celery", "-A", "worker.celery_app", "worker",
        "--loglevel=INFO", "-Q", "a,b", "--concurrency=1", "--hostname=courier-2@%h",
    ]  # fmt: skip
    # Celery's spelling without "@" names the host; the name is then Celery's default.
    assert parse_worker_args(["--hostname=box", "--concurrency=2", "-P", "solo"]).rest == ()
    assert child_argv(parse_worker_args(["--hostname=box"]), 1)[-1] == "--hostname=celery-1@box"


def test_two_children_run_every_task_and_both_take_some(shared: Pod) -> None:
    assert len(shared.children()) == 2
    ids = shared.submit(40, sleep=0.05)
    for task_id in ids:
        assert wait_for_status(shared.api, task_id, timeout=60)["status"] == "succeeded"
    app = create_celery_app(Settings(redis_url=shared.server.url))
    try:
        stats = app.control.inspect(timeout=5).stats() or {}
    finally:
        app.close()
    host = next(iter(stats)).partition("@")[2] if stats else ""
    assert set(stats) == {f"pod-1@{host}", f"pod-2@{host}"}
    ran = {node: stat["total"].get("noop", 0) for node, stat in stats.items()}
    assert sum(ran.values()) >= len(ids)
    assert all(count > 0 for count in ran.values()), ran


def test_the_pod_metrics_sum_the_children_counters(shared: Pod) -> None:
    before = total(scrape(f"{shared.url}/metrics"), "celery_task_succeeded_total", name="noop")
    ids = shared.submit(10, sleep=0.05)
    for task_id in ids:
        wait_for_status(shared.api, task_id, timeout=60)
    samples = scrape(f"{shared.url}/metrics")
    assert total(samples, "celery_task_succeeded_total", name="noop") - before == len(ids)
    # One series per queue: the supervisor alone exports the queue gauges.
    backlog = [labels for name, labels in samples if name == "courier_queue_backlog"]
    assert [dict(labels)["queue_name"] for labels in backlog].count(DEFAULT_QUEUE) == 1
    # Each child is a worker of its own in the registry, with one process.
    queue = {"queue_name": DEFAULT_QUEUE}
    assert total(samples, "celery_active_worker_count", **queue) == 2
    assert total(samples, "celery_active_process_count", **queue) == 2


def test_a_crashed_child_is_replaced_and_the_queue_drains_on(shared: Pod) -> None:
    victim = shared.children()[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(
        lambda: len(shared.children()) == 2 and victim not in shared.children(),
        30,
        "a new child in place of the killed one",
    )
    assert "worker child exited unexpectedly: restarting it" in shared.supervisor.output()
    for task_id in shared.submit(10):
        assert wait_for_status(shared.api, task_id, timeout=60)["status"] == "succeeded"
    wait_until(lambda: shared.readyz().status_code == 200, 60, "every child ready again")


def test_the_pod_reads_down_while_its_only_child_is_dead_and_up_once_replaced(
    tmp_path: Path,
) -> None:
    with pod(tmp_path, concurrency=1) as single:

        def worker_up() -> float:
            return total(scrape(f"{single.url}/metrics"), "celery_worker_up")

        wait_until(lambda: worker_up() == 1, 30, "celery_worker_up 1 once the child is ready")
        (victim,) = single.children()
        os.kill(victim, signal.SIGKILL)
        # The replacement starts after a second's backoff and is ready seconds later.
        wait_until(lambda: worker_up() == 0, 10, "celery_worker_up 0 with the child dead", 0.05)
        wait_until(lambda: worker_up() == 1, 60, "celery_worker_up 1 once it is replaced")


def test_a_child_stuck_in_c_code_holding_the_gil_is_killed_and_replaced(shared: Pod) -> None:
    before = set(shared.children())
    task_id = enqueue(shared.api, HOLDS_GIL_TASK, {"seconds": 300})
    wait_for_status(shared.api, task_id, {"started"})
    # The pool alone cannot stop it (its timekeeper needs the GIL): the supervisor does,
    # once the heartbeat is older than the hard limit and the pool's two graces.
    done = wait_for_status(shared.api, task_id, timeout=HARD + 2 * GRACE + 30)
    assert (done["status"], done["error"]["type"]) == ("failed", "TimeLimitExceeded")
    output = shared.supervisor.output()
    assert "worker child stuck (a task holding the GIL?): killing it" in output
    assert task_id in output
    wait_until(
        lambda: len(shared.children()) == 2 and set(shared.children()) != before,
        30,
        "the stuck child replaced",
    )
    for after in shared.submit(4):
        assert wait_for_status(shared.api, after, timeout=60)["status"] == "succeeded"
    # Nothing lost: its message waits, unacknowledged, for the visibility timeout; redelivered,
    # it is skipped as finished (its failure is stored).
    wait_until(
        lambda: [task_id.encode() in raw for raw in shared.redis.hvals("unacked")] == [True],
        10,
        "the stuck task's message alone unacknowledged",
    )


def test_readyz_follows_redis(shared: Pod) -> None:
    wait_until(lambda: shared.readyz().status_code == 200, 60, "every child ready")
    assert httpx.get(f"{shared.url}/healthz", timeout=5).status_code == 200
    shared.server.stop()
    try:
        wait_until(lambda: shared.readyz().status_code == 503, 15, "/readyz to say 503")
        assert "Redis" in shared.readyz().json()["detail"]
        # The liveness probe does not follow Redis: a Redis outage restarts no pod.
        assert httpx.get(f"{shared.url}/healthz", timeout=5).status_code == 200
    finally:
        shared.server.start()
    wait_until(lambda: shared.readyz().status_code == 200, 60, "/readyz to say 200 again")
    for task_id in shared.submit(4):
        assert wait_for_status(shared.api, task_id, timeout=60)["status"] == "succeeded"


def test_sigterm_lets_running_tasks_finish_and_loses_nothing(tmp_path: Path) -> None:
    with pod(tmp_path, {"COURIER_TASK_TIME_LIMIT": "30"}) as running:
        long = running.submit(2, sleep=3)
        for task_id in long:
            wait_for_status(running.api, task_id, {"started"})
        queued = running.submit(5)
        running.supervisor.process.send_signal(signal.SIGTERM)
        assert running.supervisor.process.wait(timeout=30) == 0
        for task_id in long:
            assert wait_for_status(running.api, task_id, timeout=5)["status"] == "succeeded"
        statuses = {running.api.get(f"/v1/tasks/{t}").json()["status"] for t in queued}
        assert statuses == {"queued"}
        assert running.redis.llen(DEFAULT_QUEUE) == len(queued)
        assert running.redis.hlen("unacked") == 0
        assert not running.children()


def test_an_outsiders_celery_inspect_hears_both_busy_children_and_terminate_works(
    tmp_path: Path,
) -> None:
    """The chart's default pod from outside, as an operator or Flower sees it: with both
    children running a task, a stock ``celery inspect active`` (Celery's CLI and default app,
    none of Courier's code) hears each child, with its task, within its timeout; a stock
    revoke with terminate stops both tasks, each child answering once; SIGTERM stops the pod."""
    with pod(tmp_path, {"COURIER_TASK_TIME_LIMIT": "120"}) as running:
        busy = running.submit(2, sleep=60)
        for task_id in busy:
            wait_for_status(running.api, task_id, {"started"})
        # "started" is stamped at the fetch, before a child's event loop hands the task to its
        # pool (worker/transport/stamp.py): wait until both run, which only the listeners
        # can tell while they do (the event loops are inside the tasks).
        app = create_celery_app(Settings(redis_url=running.server.url))

        def running_ids() -> list[str]:
            replies = app.control.inspect(timeout=2).active() or {}
            return sorted(task["id"] for tasks in replies.values() for task in tasks)

        try:
            wait_until(lambda: running_ids() == sorted(busy), 30, "both tasks running")
        finally:
            app.close()
        cli = [sys.executable, "-m", "celery", "--broker", running.server.url, "inspect"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("COURIER_")}
        started = time.monotonic()
        out = subprocess.run(
            [*cli, "active", "--timeout=5", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        replies: dict[str, list[dict[str, Any]]] = json.loads(out.strip().splitlines()[-1])
        active = {
            node.partition("@")[0]: [task["id"] for task in tasks]
            for node, tasks in replies.items()
        }
        assert sorted(active) == ["pod-1", "pod-2"], out
        assert sorted(task_id for ids in active.values() for task_id in ids) == sorted(busy)
        # Answered while busy: both tasks still run (each sleeps a minute).
        assert time.monotonic() - started < 50
        assert {running.api.get(f"/v1/tasks/{t}").json()["status"] for t in busy} == {"started"}

        outsider = Celery(broker=running.server.url)
        try:
            revoked = outsider.control.revoke(busy, terminate=True, reply=True, timeout=5) or []
        finally:
            outsider.close()
        assert sorted(node.partition("@")[0] for reply in revoked for node in reply) == [
            "pod-1",
            "pod-2",
        ], revoked
        # Each child names the task it stopped, as Celery's own reply does, not every id given.
        answers = {
            node.partition("@")[0]: answer for reply in revoked for node, answer in reply.items()
        }
        assert answers == {node: {"ok": f"terminate: {ids[0]}"} for node, ids in active.items()}, (
            revoked
        )
        for task_id in busy:
            assert wait_for_status(running.api, task_id, timeout=20)["status"] == "revoked"

        running.supervisor.process.send_signal(signal.SIGTERM)
        assert running.supervisor.process.wait(timeout=30) == 0
        assert not running.children()


def test_with_prefork_the_supervisor_is_replaced_by_celery(tmp_path: Path) -> None:
    """The chart's default pool: Celery itself is PID 1, as before the supervisor."""
    with RedisServer(tmp_path / "redis") as server:
        port = free_port()
        variables = {
            "COURIER_REDIS_URL": server.url,
            "COURIER_WORKER_METRICS_PORT": str(port),
            "COURIER_WORKER_POOL": "prefork",
        }
        args = [sys.executable, "-m", "worker.supervisor", "--concurrency=1", "-n", "pf@%h"]
        with Service(args, courier_env(variables), tmp_path / "worker.log") as worker:
            wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/readyz"), 90, "/readyz")
            argv = Path(f"/proc/{worker.pid}/cmdline").read_bytes().split(b"\0")
            assert b"celery" in argv and b"worker.supervisor" not in argv
            assert len(child_pids(worker.pid)) == 1  # prefork's one pool process


def test_a_child_that_cannot_start_stops_the_supervisor_with_a_failure(tmp_path: Path) -> None:
    """A setting that stops every worker at start-up (an unknown task in the limits): after five
    failed starts in a row the supervisor exits non-zero, so the pod restarts where it shows."""
    with RedisServer(tmp_path / "redis") as server:
        variables = {
            "COURIER_REDIS_URL": server.url,
            "COURIER_WORKER_METRICS_PORT": "0",
            "COURIER_WORKER_POOL": "inline",
            "COURIER_TASK_TIME_LIMITS": '{"no_such_task": {"hard": 1}}',
        }
        args = [sys.executable, "-m", "worker.supervisor", "--concurrency=1"]
        with Service(args, courier_env(variables), tmp_path / "supervisor.log") as supervisor:
            # Backoff 1 + 2 + 4 + 8 s between five starts of a few seconds each.
            assert supervisor.process.wait(timeout=120) == 1
            assert "worker child cannot start: stopping the supervisor" in supervisor.output()
