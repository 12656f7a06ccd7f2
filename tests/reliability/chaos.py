"""Fault injection on real processes: what happens to accepted tasks when things die.

Each scenario runs a real Redis, real Celery workers and the API, injects faults, then checks
every task that got a 202 and reports figures. The tests run small scales; ``make chaos``
(``python -m tests.reliability.chaos``) runs the issue's full scale and prints the table, then
the Redis Sentinel faults (``chaos_sentinel.py``) and their own table.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from fastapi.testclient import TestClient

from app.main import create_app
from tests.reliability import chaos_sentinel
from tests.reliability.chaos_ledger import INCLUDE as LEDGER_INCLUDE
from tests.reliability.chaos_ledger import LEDGER_DIR, read_ledger
from tests.reliability.workdirs import scenario_dir
from tests.utils.netns import NetworkLink
from tests.utils.processes import (
    RedisServer,
    Service,
    celery_worker,
    child_pids,
    courier_env,
    wait_until,
)
from worker.core.settings import Settings

TERMINAL = {"succeeded", "failed", "revoked"}


@dataclass
class Figures:
    scenario: str
    submitted: int = 0
    accepted: int = 0
    refused_503: int = 0
    succeeded: int = 0
    lost: int = 0
    duplicated: int = 0
    notes: dict[str, Any] = field(default_factory=dict)

    def row(self) -> str:
        notes = ", ".join(f"{k}={v}" for k, v in self.notes.items())
        return (
            f"| {self.scenario} | {self.submitted} | {self.accepted} | {self.refused_503} | "
            f"{self.succeeded} | {self.lost} | {self.duplicated} | {notes} |"
        )


TABLE_HEADER = (
    "| scenario | submitted | accepted (202) | refused (503) | succeeded | lost | duplicated "
    "| notes |\n|---|---|---|---|---|---|---|---|"
)


class Cluster:
    """A Redis, N workers and an in-process API, all on one fresh Redis."""

    def __init__(
        self,
        workdir: Path,
        visibility_timeout: int = 5,
        redis_args: tuple[str, ...] = (),
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.redis = RedisServer(workdir / "redis", extra_args=redis_args)
        self.redis.start()
        self.env = {
            "COURIER_REDIS_URL": self.redis.url,
            "COURIER_BROKER_VISIBILITY_TIMEOUT": str(visibility_timeout),
            **(extra_env or {}),
        }
        self.workers: dict[str, Service] = {}
        self._client_cm = TestClient(create_app(Settings.model_validate(self._fields())))
        self.api = self._client_cm.__enter__()
        self._starts = 0

    def _fields(self) -> dict[str, str]:
        return {k.removeprefix("COURIER_").lower(): v for k, v in self.env.items()}

    def start_worker(
        self,
        name: str,
        concurrency: int = 2,
        env: dict[str, str] | None = None,
        prefix: tuple[str, ...] = (),
        extra_args: tuple[str, ...] = (),
        pool: str = "prefork",
    ) -> Service:
        self._starts += 1
        log = self.workdir / f"{name}-{self._starts}.log"
        variables = courier_env({**self.env, **(env or {})})
        self.workers[name] = celery_worker(
            variables, log, name, concurrency, extra_args=extra_args, prefix=prefix, pool=pool
        )
        return self.workers[name]

    def submit(self, payload: dict[str, Any], **headers: str) -> tuple[int, str | None]:
        response = self.api.post("/v1/tasks/noop", json=payload, headers=headers)
        task_id = response.json().get("id") if response.status_code == 202 else None
        return response.status_code, task_id

    def status(self, task_id: str) -> dict[str, Any]:
        response = self.api.get(f"/v1/tasks/{task_id}")
        if response.status_code == 404:
            return {"status": "lost"}
        body: dict[str, Any] = response.json()
        return body

    def settle(self, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
        """Wait until every task finished (or the timeout); returns each one's last status."""
        deadline = time.monotonic() + timeout
        states: dict[str, dict[str, Any]] = {}
        pending = list(ids)
        while pending and time.monotonic() < deadline:
            still = []
            for task_id in pending:
                try:
                    states[task_id] = self.status(task_id)
                except Exception:  # Redis may be restarting: look again
                    still.append(task_id)
                    continue
                if states[task_id]["status"] not in TERMINAL | {"lost"}:
                    still.append(task_id)
            pending = still
            if pending:
                time.sleep(0.2)
        return states

    def close(self) -> None:
        for service in self.workers.values():
            service.stop(timeout=20)
        self._client_cm.__exit__(None, None, None)
        self.redis.stop()


@contextmanager
def cluster(workdir: Path | None = None, **kwargs: Any) -> Iterator[Cluster]:
    with scenario_dir("courier-chaos-") as tmp:
        instance = Cluster(workdir or tmp, **kwargs)
        try:
            yield instance
        finally:
            instance.close()


def tally(figures: Figures, states: dict[str, dict[str, Any]], ids: list[str]) -> Figures:
    figures.succeeded = sum(states.get(i, {}).get("status") == "succeeded" for i in ids)
    figures.lost = figures.accepted - figures.succeeded
    figures.duplicated = sum(
        max(0, int(s.get("executions", 1)) - 1 - int(s.get("retries", 0)))
        for s in states.values()
        if s.get("status") == "succeeded"
    )
    return figures


def wait_consuming(c: Cluster) -> None:
    _, warm = c.submit({})
    assert warm
    wait_until(lambda: c.status(warm)["status"] == "succeeded", 60, "workers to consume")


def worker_loss(
    tasks: int, child_kills: int, worker_kills: int, sleep: float = 0.2, seed: int = 7
) -> Figures:
    """SIGKILL pool children and whole workers (restarted) while tasks run on two workers."""
    rng = random.Random(seed)
    figures = Figures("worker loss", notes={"child_kills": 0, "worker_kills": 0})
    with cluster(visibility_timeout=5) as c:
        for name in ("w1", "w2"):
            c.start_worker(name)
        wait_consuming(c)
        ids = []
        for i in range(tasks):
            _, task_id = c.submit({"echo": i, "sleep_seconds": sleep})
            assert task_id
            ids.append(task_id)
        figures.submitted = figures.accepted = tasks
        actions = ["child"] * child_kills + ["worker"] * worker_kills
        rng.shuffle(actions)
        # Spread the faults over the time the backlog takes to drain (4 processes).
        pause = max(0.1, tasks * sleep / 4 / (len(actions) + 1))
        for action in actions:
            time.sleep(pause)
            name = rng.choice(sorted(c.workers))
            service = c.workers[name]
            if action == "child":
                children = child_pids(service.pid)
                if children:
                    os.kill(rng.choice(children), signal.SIGKILL)
                    figures.notes["child_kills"] += 1
            else:
                service.kill()
                figures.notes["worker_kills"] += 1
                c.start_worker(name)
        states = c.settle(ids, timeout=120)
    return tally(figures, states, ids)


def graceful_scale_down(long_tasks: int = 2, sleep: float = 3.0) -> Figures:
    """SIGTERM a worker mid-task: it finishes what it runs, takes nothing new, loses nothing."""
    figures = Figures("graceful SIGTERM")
    with cluster(visibility_timeout=30) as c:
        # The ledger says when a task's body is about to run in a pool process. Its status is no
        # witness: a worker marks a task started as it fetches it, and a SIGTERM between the
        # fetch and the pool gives the message back instead (seen once: 10 ms apart, 1 of the 2
        # 'started' tasks finished before the exit, the other ran on the successor).
        ledger = c.workdir / "ledger"
        ledger.mkdir()
        worker = c.start_worker(
            "leaving", env={LEDGER_DIR: str(ledger)}, extra_args=(LEDGER_INCLUDE,)
        )
        wait_consuming(c)
        ids = [c.submit({"sleep_seconds": sleep})[1] for _ in range(long_tasks * 2)]
        running = [i for i in ids if i]
        figures.submitted = figures.accepted = len(running)
        wait_until(
            lambda: len(read_ledger(ledger)[0].keys() & set(running)) == long_tasks,
            20,
            "the first tasks to run in the pool",
        )
        started = time.monotonic()
        worker.process.send_signal(signal.SIGTERM)
        code = worker.process.wait(sleep + 20)
        figures.notes["exit_code"] = code
        figures.notes["shutdown_s"] = round(time.monotonic() - started, 1)
        finished_first = sum(c.status(i)["status"] == "succeeded" for i in running)
        figures.notes["finished_before_exit"] = finished_first
        c.start_worker("successor")
        states = c.settle(running, timeout=60)
    return tally(figures, states, running)


def grace_exceeded(sleep: float = 8.0, grace: float = 1.0) -> Figures:
    """SIGTERM then SIGKILL after the grace period (Kubernetes): the task is redelivered."""
    figures = Figures("grace period exceeded")
    with cluster(visibility_timeout=3) as c:
        worker = c.start_worker("evicted", concurrency=1)
        wait_consuming(c)
        _, task_id = c.submit({"sleep_seconds": sleep / 4, "echo": "survives"})
        assert task_id
        figures.submitted = figures.accepted = 1
        wait_until(lambda: c.status(task_id)["status"] == "started", 20, "the task to run")
        worker.process.send_signal(signal.SIGTERM)
        time.sleep(grace)
        worker.kill()
        c.start_worker("replacement", concurrency=1)
        states = c.settle([task_id], timeout=60)
    figures.notes["executions"] = states[task_id].get("executions")
    return tally(figures, states, [task_id])


def redis_restarts(
    restarts: int,
    mode: str,
    fsync: str,
    rate: float = 100.0,
    downtime: float = 0.5,
    pool: str = "prefork",
) -> Figures:
    """Restart an AOF Redis (SIGTERM or SIGKILL) while the API accepts and workers run tasks
    (with ``pool`` inline, each task's state rides in the call acknowledging it)."""
    pool_note = "" if pool == "prefork" else f", {pool} pool"
    figures = Figures(f"redis {mode} x{restarts}, appendfsync {fsync}{pool_note}")
    redis_args = ("--appendonly", "yes", "--appendfsync", fsync)
    with cluster(visibility_timeout=10, redis_args=redis_args) as c:
        c.start_worker("steady", pool=pool)
        wait_consuming(c)
        accepted: list[str] = []
        refused = 0
        submitted = 0
        stop = threading.Event()

        def submitter() -> None:
            nonlocal refused, submitted
            while not stop.is_set():
                submitted += 1
                try:
                    code, task_id = c.submit({"echo": submitted})
                except Exception:  # counted as not accepted
                    code, task_id = 0, None
                if code == 202 and task_id:
                    accepted.append(task_id)
                elif code == 503:
                    refused += 1
                else:
                    assert code in (0, 503), f"unexpected {code}"
                time.sleep(1 / rate)

        thread = threading.Thread(target=submitter, daemon=True)
        thread.start()
        for _ in range(restarts):
            time.sleep(1.0)
            c.redis.stop() if mode == "SIGTERM" else c.redis.kill()
            time.sleep(downtime)
            c.redis.start()
        time.sleep(1.0)
        stop.set()
        thread.join(10)
        figures.submitted, figures.accepted, figures.refused_503 = submitted, len(accepted), refused
        # Tasks accepted after the last restart prove the worker resumed consuming by itself.
        states = c.settle(accepted, timeout=90)
    return tally(figures, states, accepted)


def blocked_clients(c: Cluster, address: str) -> int:
    """Connections from ``address`` blocked in a command (BRPOP, BLMOVE) right now."""
    client = redis.Redis(port=c.redis.port)
    try:
        return sum(
            1
            for entry in client.client_list()
            if entry["addr"].rsplit(":", 1)[0] == address and "b" in entry["flags"]
        )
    finally:
        client.close()


def partition(cut_seconds: float = 12.0, during: int = 4, visibility_timeout: int = 5) -> Figures:
    """Cut a worker's link to Redis (network namespace, veth down) while it waits for work,
    submit right away (Redis answers the worker's pending blocking call into the dead link)
    and then ``during`` more, heal it after ``cut_seconds``: every accepted task must run."""
    figures = Figures("network partition", notes={"cut_s": cut_seconds})
    with NetworkLink() as link:
        bind = ("--bind", "127.0.0.1", link.host_address, "--protected-mode", "no")
        with cluster(visibility_timeout=visibility_timeout, redis_args=bind) as c:
            c.start_worker(
                "partitioned",
                env={"COURIER_REDIS_URL": f"redis://{link.host_address}:{c.redis.port}/0"},
                prefix=link.exec_prefix,
            )
            wait_consuming(c)
            # The worker is waiting in a blocking command: what Redis answers it now is lost
            # with the link, unless that answer takes nothing off the queue.
            wait_until(lambda: blocked_clients(c, link.inner_address), 30, "a blocked fetch")
            ids: list[str] = []
            started = time.monotonic()
            link.cut()
            try:
                for n in range(during + 1):
                    _, task_id = c.submit({"echo": f"partition-{n}"})
                    assert task_id
                    ids.append(task_id)
                    time.sleep(min(1.0, cut_seconds / (during + 2)))
                time.sleep(max(0.0, cut_seconds - (time.monotonic() - started)))
            finally:
                link.heal()
            figures.notes["cut_for_s"] = round(time.monotonic() - started, 1)
            _, after = c.submit({"echo": "after the partition"})
            assert after
            ids.append(after)
            figures.submitted = figures.accepted = len(ids)
            states = c.settle(ids, timeout=visibility_timeout + 120)
    return tally(figures, states, ids)


def redis_down_at_startup() -> Figures:
    """API and worker start without Redis, report not ready, then serve once it appears."""
    import httpx

    from tests.utils.processes import free_port, gunicorn

    figures = Figures("redis down at start-up")
    with scenario_dir("courier-chaos-") as workdir:
        redis_server = RedisServer(workdir / "redis")
        api_port, metrics_port = free_port(), free_port()
        env = courier_env(
            {
                "COURIER_REDIS_URL": redis_server.url,
                "COURIER_API_BIND": f"127.0.0.1:{api_port}",
                "COURIER_WORKER_METRICS_PORT": str(metrics_port),
            }
        )
        api = gunicorn(env, workdir / "api.log")
        worker = celery_worker(env, workdir / "worker.log", "patient")
        api_url, worker_url = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{metrics_port}"

        def code(url: str) -> int:
            try:
                return httpx.get(url, timeout=2).status_code
            except httpx.HTTPError:
                return 0

        try:
            wait_until(lambda: code(f"{api_url}/healthz") == 200, 30, "the API to start")
            wait_until(lambda: code(f"{worker_url}/healthz") == 200, 60, "the worker to start")
            figures.notes["api_ready_without_redis"] = code(f"{api_url}/readyz")
            figures.notes["worker_ready_without_redis"] = code(f"{worker_url}/readyz")
            redis_server.start()
            started = time.monotonic()
            wait_until(lambda: code(f"{api_url}/readyz") == 200, 30, "the API to be ready")
            wait_until(lambda: code(f"{worker_url}/readyz") == 200, 60, "the worker to be ready")
            figures.notes["ready_after_s"] = round(time.monotonic() - started, 1)
            response = httpx.post(f"{api_url}/v1/tasks/noop", json={"echo": "late"}, timeout=5)
            figures.submitted = 1
            figures.accepted = int(response.status_code == 202)
            task_id = response.json()["id"]
            wait_until(
                lambda: (
                    httpx.get(f"{api_url}/v1/tasks/{task_id}", timeout=5).json()["status"]
                    == "succeeded"
                ),
                30,
                "the task to run",
            )
            figures.succeeded = 1
        finally:
            worker.stop()
            api.stop()
            redis_server.stop()
    return figures


def fill_past_maxmemory(client: redis.Redis, excess: int) -> None:
    """Leave Redis ``excess`` bytes above its maxmemory with a key of another producer: one
    large write taken while Redis was just below (``noeviction`` checks before a write, not
    after). The limit is lifted around it, as the submits may have left Redis at the line."""
    memory = client.info("memory")
    limit = int(memory["maxmemory"])
    size = max(0, limit - int(memory["used_memory"])) + excess
    client.config_set("maxmemory", 0)
    try:
        client.set("other-producer:filler", b"f" * size)
    finally:
        client.config_set("maxmemory", limit)


def redis_full(
    maxmemory_mb: int = 8,
    payload_bytes: int = 2000,
    excess: int = 512 * 1024,
    workers: int = 1,
    pool: str = "prefork",
) -> Figures:
    """Fill Redis through the API until it answers 503, push it past maxmemory with another
    producer's key, then start workers: they must start and drain everything accepted, with
    no manual step, although each result stored is larger than the message it replaces."""
    figures = Figures(f"redis full: maxmemory {maxmemory_mb} MB, noeviction")
    redis_args = ("--maxmemory", f"{maxmemory_mb}mb")
    with cluster(visibility_timeout=30, redis_args=redis_args) as c:
        client = redis.Redis(port=c.redis.port)
        ids: list[str] = []
        echo = "x" * payload_bytes
        first_503: Any = None
        at_first_503: dict[str, Any] = {}
        while figures.refused_503 < 20:
            figures.submitted += 1
            response = c.api.post("/v1/tasks/noop", json={"echo": echo})
            if response.status_code == 202:
                ids.append(response.json()["id"])
            elif response.status_code == 503:
                figures.refused_503 += 1
                if first_503 is None:
                    first_503, at_first_503 = response, client.info("memory")
            else:
                raise AssertionError(f"unexpected {response.status_code}: {response.text}")
        figures.accepted = len(ids)
        figures.notes["503_json"] = first_503.headers["content-type"] == "application/json"
        figures.notes["503_retry_after"] = first_503.headers.get("retry-after")
        # The API's own watermark, not Redis's OOM, should be what refused first.
        figures.notes["first_503_by_watermark"] = "submits are refused above" in first_503.text
        figures.notes["first_503_at"] = (
            f"{int(at_first_503['used_memory']) / int(at_first_503['maxmemory']):.0%}"
        )
        fill_past_maxmemory(client, excess)
        full = client.info("memory")
        figures.notes["full_at"] = f"{int(full['used_memory']) / int(full['maxmemory']):.0%}"
        ready = c.api.get("/readyz")
        figures.notes["readyz"] = ready.status_code
        figures.notes["readyz_says_full"] = "Redis is full" in ready.json().get("detail", "")
        status_while_full = c.api.get(f"/v1/tasks/{ids[0]}")
        figures.notes["status_read_while_full"] = status_while_full.status_code
        started = time.monotonic()
        for n in range(workers):
            c.start_worker(f"drainer{n}", pool=pool)
        states = c.settle(ids, timeout=60 + len(ids) * 0.2)
        figures.notes["drain_s"] = round(time.monotonic() - started, 1)
        drained = client.info("memory")
        figures.notes["after_drain"] = (
            f"{int(drained['used_memory']) / int(drained['maxmemory']):.0%}"
        )
        figures.notes["workers_alive"] = sum(w.process.poll() is None for w in c.workers.values())
        figures.notes["unrecoverable"] = sum(
            "Unrecoverable error" in w.output() for w in c.workers.values()
        )
        client.close()
    return tally(figures, states, ids)


def main() -> None:
    parser = argparse.ArgumentParser(description="Courier's fault-injection figures")
    parser.add_argument("--quick", action="store_true", help="test-suite scale")
    parser.add_argument(
        "--only",
        help="run the scenarios whose name contains this (the Sentinel ones: 'sentinel' for all,"
        " or kill-primary, planned-failover, freeze-primary, kill-sentinel, partition-primary)",
    )
    args = parser.parse_args()
    full = not args.quick
    runs: dict[str, Callable[[], Figures]] = {
        "worker-loss": lambda: worker_loss(
            500 if full else 60, 20 if full else 4, 5 if full else 1
        ),
        "graceful": graceful_scale_down,
        "grace-exceeded": grace_exceeded,
        "redis-sigterm": lambda: redis_restarts(5 if full else 2, "SIGTERM", "everysec"),
        "redis-sigkill": lambda: redis_restarts(5 if full else 2, "SIGKILL", "everysec"),
        "redis-sigkill-always": lambda: redis_restarts(5 if full else 2, "SIGKILL", "always"),
        "redis-down-at-startup": redis_down_at_startup,
        "partition": partition,
        "redis-full": lambda: redis_full(64 if full else 8, workers=2 if full else 1),
    }
    rows = []
    for name, run in runs.items():
        if args.only and args.only not in name:
            continue
        figures = run()
        print(figures.row(), file=sys.stderr, flush=True)
        rows.append(figures.row())
    if rows:
        print(TABLE_HEADER)
        print("\n".join(rows))
    # Redis Sentinel (issue 14): three Redis, three Sentinels, each fault several times.
    sentinel_rows = chaos_sentinel.run_all(repeats=3 if full else 1, only=args.only)
    if sentinel_rows:
        print(("\n" if rows else "") + chaos_sentinel.TABLE_HEADER)
        print("\n".join(sentinel_rows))


if __name__ == "__main__":
    main()
