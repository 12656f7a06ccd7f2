"""Redis Sentinel: every client finds the primary through Sentinel and follows a failover.

Real processes throughout: three redis-servers and three Sentinels (``tests/utils/sentinel.py``),
the API under gunicorn, a prefork Celery worker, beat. The data servers and the Sentinels have
different passwords, and ``COURIER_REDIS_URL`` names a port where nothing listens: a client that
did not go through Sentinel, or mixed up the passwords, fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from app.main import create_app
from tests.conftest import settings_from
from tests.utils.processes import (
    POOLS,
    celery_beat,
    celery_worker,
    courier_env,
    free_port,
    gunicorn,
    http_ok,
    wait_until,
)
from tests.utils.readiness import ReadyzWatch
from tests.utils.sentinel import SentinelCluster
from worker.celery_config import create_celery_app
from worker.core.names import (
    DEFAULT_QUEUE,
    DELIVERY_TAG_HEADER,
    RECONCILE_TASK,
    TASK_RECORD_KEY,
    UNACKED_KEY,
)
from worker.core.redis_client import create_async_redis, create_redis
from worker.core.result_backend import CourierSentinelBackend
from worker.transport import SentinelChannel

# Tasks fetched from a primary that died before replicating the acknowledgement come back
# after the visibility timeout: short here, so the test sees them run again.
VISIBILITY_TIMEOUT = 10


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelCluster]:
    with SentinelCluster(tmp_path_factory.mktemp("sentinel")) as running:
        yield running


def served_by(client: redis.Redis) -> int:
    return int(client.info("server")["tcp_port"])


def test_the_sync_and_asyncio_clients_find_the_primary_through_sentinel(
    cluster: SentinelCluster,
) -> None:
    settings = settings_from(cluster.courier_vars())
    primary = cluster.primary_port()
    client = create_redis(settings)
    try:
        assert served_by(client) == primary
        assert client.set("sentinel-probe", "sync")
    finally:
        client.close()

    async def asyncio_side() -> int:
        aclient = create_async_redis(settings)
        try:
            assert await aclient.set("sentinel-probe", "asyncio")
            return int((await aclient.info("server"))["tcp_port"])
        finally:
            await aclient.aclose()

    assert asyncio.run(asyncio_side()) == primary


def test_the_broker_transport_and_result_backend_find_the_primary_through_sentinel(
    cluster: SentinelCluster,
) -> None:
    app = create_celery_app(settings_from(cluster.courier_vars()))
    primary = cluster.primary_port()
    try:
        with app.connection_for_write() as connection:
            channel = connection.default_channel
            assert isinstance(channel, SentinelChannel)
            assert served_by(channel.client) == primary
            channel._put("sentinel-probe-queue", {"body": "x", "properties": {}})
        assert isinstance(app.backend, CourierSentinelBackend)
        app.backend.store_result("sentinel-probe-task", 42, "SUCCESS")
        with cluster.data_client(primary) as direct:
            assert direct.llen("sentinel-probe-queue") == 1
            assert app.backend.get_key_for_task("sentinel-probe-task") in direct.keys("celery-*")
    finally:
        app.close()


def test_an_inline_workers_channel_takes_the_sentinel_backends_states_to_carry(
    cluster: SentinelCluster,
) -> None:
    """The same Redis on both sides (the Sentinels' service, database, credentials): a final
    state of a task the channel delivered rides in its acknowledgement's call
    (``worker/core/result_carry.py``), where the delivery must be recorded."""
    variables = {**cluster.courier_vars(), "COURIER_WORKER_POOL": "inline"}
    app = create_celery_app(settings_from(variables))
    try:
        with app.connection_for_write() as connection:
            channel = connection.default_channel
            assert isinstance(channel, SentinelChannel) and channel.carried is None
            channel.basic_consume(DEFAULT_QUEUE, False, lambda message: None, "carry-probe")
            assert channel.carried is not None  # a consumer that acknowledges
            assert isinstance(app.backend, CourierSentinelBackend)
            assert channel.carried.identity == app.backend.redis_identity()
    finally:
        app.close()


def test_the_api_reads_and_writes_the_primary_through_sentinel(cluster: SentinelCluster) -> None:
    from fastapi.testclient import TestClient

    with TestClient(create_app(settings_from(cluster.courier_vars()))) as api:
        assert api.get("/readyz").status_code == 200
        accepted = api.post("/v1/tasks/noop", json={"echo": "via sentinel"})
        assert accepted.status_code == 202, accepted.text
        task_id = accepted.json()["id"]
        assert api.get(f"/v1/tasks/{task_id}").json()["status"] == "queued"
    with cluster.data_client(cluster.primary_port()) as direct:
        assert direct.llen(DEFAULT_QUEUE) >= 1


def test_beat_sends_its_schedule_through_sentinel(cluster: SentinelCluster, tmp_path: Path) -> None:
    env = courier_env(
        {
            **cluster.courier_vars(),
            "COURIER_QUEUES": "beat-only",
            "COURIER_RECONCILE_INTERVAL_SECONDS": "0.5",
            "COURIER_BEAT_SCHEDULE_FILE": str(tmp_path / "schedule"),
        }
    )
    with (
        cluster.data_client(cluster.primary_port()) as direct,
        celery_beat(env, tmp_path / "beat.log") as beat,
    ):
        wait_until(lambda: direct.llen("beat-only") >= 2, 30, "beat's messages on the primary")
        assert RECONCILE_TASK.encode() in (direct.lindex("beat-only", 0) or b"")
        assert beat.process.poll() is None


def test_a_result_is_stored_where_its_delivery_is_recorded(cluster: SentinelCluster) -> None:
    """A state of a task a channel delivered is stored in one call where its ``unacked`` entry
    is; where it is not (as on a primary a failover left behind), the backend's connections are
    dropped and the state is stored on a new connection to the primary the Sentinels name."""
    from celery.app.task import Context

    app = create_celery_app(settings_from(cluster.courier_vars()))
    backend = app.backend
    assert isinstance(backend, CourierSentinelBackend)
    try:
        with cluster.data_client(cluster.primary_port()) as direct:
            direct.hset(UNACKED_KEY, "delivered-here", "[]")
            here = Context({"id": "t-here", DELIVERY_TAG_HEADER: "delivered-here"})
            backend.store_result("t-here", 1, "SUCCESS", request=here)
            pool: Any = backend.client.connection_pool
            (connection,) = pool._available_connections
            first = connection._sock.getsockname()
            backend.store_result("t-here", 1, "SUCCESS", request=here)  # again: same socket
            assert connection._sock.getsockname() == first
            elsewhere = Context({"id": "t-else", DELIVERY_TAG_HEADER: "not-delivered-here"})
            backend.store_result("t-else", 2, "SUCCESS", request=elsewhere)
            # Dropped: connected anew (through the Sentinels) for the store that followed.
            assert connection._sock.getsockname() != first
            for task_id, value in (("t-here", 1), ("t-else", 2)):
                stored = direct.get(backend.get_key_for_task(task_id))
                assert stored is not None and backend.decode(stored)["result"] == value
            direct.hdel(UNACKED_KEY, "delivered-here")
    finally:
        app.close()


# --- a 202 means replicated, and a failover that loses one is repaired -------------------


def test_a_submit_waits_for_a_replica_and_is_503_without_one(cluster: SentinelCluster) -> None:
    """``WAIT``: with both replicas frozen, the write reaches the primary but no replica, so the
    API says 503 "may have been stored" within the timeout, not 202."""
    from fastapi.testclient import TestClient

    settings = settings_from({**cluster.courier_vars(), "COURIER_REDIS_REPLICA_ACK_TIMEOUT": "0.3"})
    primary = cluster.primary_port()
    replicas = [server for server in cluster.servers if server.port != primary]
    with TestClient(create_app(settings)) as api:
        assert api.post("/v1/tasks/noop", json={}).status_code == 202
        for replica in replicas:
            assert replica.process is not None
            os.kill(replica.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            refused = api.post("/v1/tasks/noop", json={}, headers={"Idempotency-Key": "k-wait"})
            took = time.monotonic() - started
        finally:
            for replica in replicas:
                assert replica.process is not None
                os.kill(replica.process.pid, signal.SIGCONT)
        assert refused.status_code == 503, refused.text
        assert "no replica confirmed it" in refused.json()["detail"]
        assert "Idempotency-Key" in refused.json()["detail"]
        assert took < 5, took
        # The retry with the same key is answered with the task the first attempt stored.
        retried = api.post("/v1/tasks/noop", json={}, headers={"Idempotency-Key": "k-wait"})
        assert retried.status_code == 202, retried.text


def test_an_accepted_task_the_new_primary_lacks_is_written_again(
    failover_cluster: SentinelCluster,
) -> None:
    """The failover audit (``app/failover_audit.py``): a task accepted on the old primary and
    missing on the new one (as if it was never replicated there) is restored, with its id,
    record and message, once the Sentinels name the new primary; one it has is left alone."""
    from fastapi.testclient import TestClient

    cluster = failover_cluster
    with TestClient(create_app(settings_from(cluster.courier_vars()))) as api:
        lost = api.post("/v1/tasks/noop", json={"echo": "lost"}).json()["id"]
        kept = api.post("/v1/tasks/noop", json={"echo": "kept"}).json()["id"]
        record = TASK_RECORD_KEY.format(task_id=lost)
        primary = cluster.primary_port()
        for server in cluster.servers:
            if server.port == primary:
                continue
            # Each replica forgets the task, as one that never received it: whichever is
            # promoted lacks it (a writable replica keeps its own writes to itself).
            with cluster.data_client(server.port) as replica:
                wait_until(partial(replica.exists, record), 10, "the task replicated")
                replica.config_set("replica-read-only", "no")
                message = next(
                    m for m in replica.lrange(DEFAULT_QUEUE, 0, -1) if lost.encode() in m
                )
                assert replica.delete(record) == 1 and replica.lrem(DEFAULT_QUEUE, 0, message) == 1
                replica.config_set("replica-read-only", "yes")
        old = cluster.kill_primary()
        new = cluster.wait_for_new_primary(old)
        with cluster.data_client(new) as direct:
            wait_until(lambda: direct.exists(record), 15, "the audit to restore the task")
            messages = direct.lrange(DEFAULT_QUEUE, 0, -1)
            assert sorted(lost.encode() in m for m in messages) == [False, True], messages
        assert api.get(f"/v1/tasks/{lost}").json()["status"] == "queued"
        assert api.get(f"/v1/tasks/{kept}").json()["status"] == "queued"
        metrics = api.get("/metrics").text
        assert 'courier_failover_rewrites_total{master="courier"} 1.0' in metrics, metrics


def test_idle_connections_leave_a_frozen_primary_once_another_is_named(
    failover_cluster: SentinelCluster,
) -> None:
    """``worker/core/primary_watch.py``: a connection idle in a pool through a failover is
    dropped once the Sentinels name the new primary, before the old one comes back (as a stale
    primary that could still take writes); the client's next command goes to the new one."""
    cluster = failover_cluster
    client = create_redis(settings_from(cluster.courier_vars()))
    try:
        client.set("before", 1)  # one connection, now idle in the pool, to the primary
        old = cluster.primary_port()
        frozen = cluster.server(old).process
        assert frozen is not None
        os.kill(frozen.pid, signal.SIGSTOP)
        try:
            new = cluster.wait_for_new_primary(old)
            pool: Any = client.connection_pool

            def left_old() -> bool:
                idle = list(pool._available_connections)
                return all(c._sock is None or c.port != old for c in idle)

            wait_until(left_old, 5, "the idle connection to leave the old primary")
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
        assert served_by(client) == new
    finally:
        client.close()


# --- failover, end to end ------------------------------------------------------------------


@dataclass
class Submitter:
    """A well-behaved client: submits continuously; a 503 or a dropped connection is retried
    with the same Idempotency-Key until it is accepted (or the test ends)."""

    base: str
    accepted: dict[str, str] = field(default_factory=dict)  # Idempotency-Key -> task id
    refused: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=5) as http:
            while not self.stop.is_set():
                key = uuid.uuid4().hex
                while not self.stop.is_set():
                    try:
                        response = http.post(
                            "/v1/tasks/noop",
                            json={"echo": key},
                            headers={"Idempotency-Key": key},
                        )
                    except httpx.HTTPError:
                        self.refused += 1
                        time.sleep(0.05)
                        continue
                    if response.status_code in (202, 200):
                        self.accepted[key] = response.json()["id"]
                        break
                    if response.status_code != 503:
                        self.errors.append(f"{response.status_code} {response.text}")
                        return
                    self.refused += 1
                    time.sleep(0.05)
                time.sleep(0.02)


def status_of(http: httpx.Client, task_id: str) -> str:
    response = http.get(f"/v1/tasks/{task_id}")
    return str(response.json().get("status")) if response.status_code == 200 else "404"


def start_thread(target: object) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)  # type: ignore[arg-type]
    thread.start()
    return thread


@pytest.fixture
def failover_cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    with SentinelCluster(tmp_path / "cluster") as running:
        yield running


# inline: the chart's worker, whose tasks' states ride in the fetch's own connection's calls
# (worker/core/result_carry.py), stored only where the delivery is recorded.
@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("fault", ["kill", "demote"])
def test_every_accepted_task_succeeds_across_a_failover_without_restarts(
    failover_cluster: SentinelCluster, tmp_path: Path, fault: str, pool: str
) -> None:
    cluster = failover_cluster
    api_port, worker_metrics = free_port(), free_port()
    env = courier_env(
        {
            **cluster.courier_vars(),
            "COURIER_API_BIND": f"127.0.0.1:{api_port}",
            "COURIER_API_WORKERS": "1",
            "COURIER_BROKER_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
            "COURIER_WORKER_METRICS_PORT": str(worker_metrics),
            "COURIER_WORKER_METRICS_HOST": "127.0.0.1",
        }
    )
    base = f"http://127.0.0.1:{api_port}"
    with (
        gunicorn(env, tmp_path / "api.log") as api,
        celery_worker(env, tmp_path / "worker.log", "failover", pool=pool) as worker,
    ):
        wait_until(lambda: http_ok(f"{base}/readyz"), 60, "the API")
        wait_until(lambda: http_ok(f"http://127.0.0.1:{worker_metrics}/readyz"), 60, "the worker")
        submitter, api_ready = Submitter(base), ReadyzWatch(f"{base}/readyz")
        worker_ready = ReadyzWatch(f"http://127.0.0.1:{worker_metrics}/readyz")
        threads = [start_thread(w.run) for w in (submitter, api_ready, worker_ready)]
        http = httpx.Client(base_url=base, timeout=5)

        def succeeded(task_id: str) -> bool:
            try:
                return bool(http.get(f"/v1/tasks/{task_id}").json().get("status") == "succeeded")
            except (httpx.HTTPError, ValueError):
                return False

        try:
            wait_until(lambda: len(submitter.accepted) >= 20, 30, "the first accepted tasks")
            first = next(iter(submitter.accepted.values()))
            wait_until(lambda: succeeded(first), 30, "the first task to run")

            worker_pid = worker.pid
            old = cluster.kill_primary() if fault == "kill" else cluster.demote_primary()
            fault_at, fault_wall = time.monotonic(), time.time()
            new = cluster.wait_for_new_primary(old)
            switched_at = time.monotonic()
            before = len(submitter.accepted)
            # Submits go on through the new primary, and the worker runs them.
            wait_until(lambda: len(submitter.accepted) >= before + 20, 60, "submits to resume")
            newest = list(submitter.accepted.values())[-1]
            wait_until(lambda: succeeded(newest), 60, "a task submitted after the switch")
            resumed_at = time.monotonic()
        except BaseException:
            # Nothing below runs: stop the watchers and close the client here, or they poll
            # a stopped API and leave their sockets to the garbage collector (a ResourceWarning
            # that failed a later test).
            api_ready.stop.set()
            worker_ready.stop.set()
            http.close()
            raise
        finally:
            submitter.stop.set()
            for thread in threads[:1]:
                thread.join(15)

        # Every accepted task ends succeeded: none lost, none left with a wrong status, read
        # once the old primary (if alive) follows the new one, so nothing read can vanish.
        pending = set(submitter.accepted.values())

        def all_done() -> bool:
            pending.difference_update({t for t in list(pending) if succeeded(t)})
            return not pending

        try:
            cluster.wait_settled()
            with contextlib.suppress(TimeoutError):
                wait_until(all_done, 4 * VISIBILITY_TIMEOUT, "every accepted task", 0.5)
            statuses = Counter(status_of(http, task_id) for task_id in pending)
        finally:
            api_ready.stop.set()
            worker_ready.stop.set()
            http.close()
        report = (
            f"{fault} ({pool}): accepted {len(submitter.accepted)}, refused {submitter.refused},"
            f" switch {switched_at - fault_at:.1f}s, tasks again {resumed_at - fault_at:.1f}s,"
            f" not succeeded {len(pending)} {dict(statuses)}"
        )
        print(report)
        assert not pending, report
        assert not submitter.errors, submitter.errors
        assert new != old
        # No restart: the same worker process (and API) served before and after.
        assert worker.process.poll() is None and worker.pid == worker_pid
        assert api.process.poll() is None
        assert "Unrecoverable error" not in worker.output()
        # Readiness: both end ready; the API said 503 while no primary answered (a kill).
        for watch in (api_ready, worker_ready):
            assert watch.seen[-1][1] == 200, watch.seen[-5:]
        if fault == "kill":
            assert 503 in api_ready.codes_between(fault_wall), report
