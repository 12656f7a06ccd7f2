"""Every Courier process follows a Sentinel failover by itself (issue 14, item 2).

``test_sentinel.py`` proves the API and a worker across a SIGKILL of the primary; this file
proves the rest with real processes and no restart: beat keeps its schedule and never sends a
tick twice, Flower lists the worker and sends tasks that run, ``/readyz`` of the API and of the
worker says 503 while no primary answers and 200 after, a dead Sentinel named first costs
nothing, every Sentinel down is a quick 503, and a primary demoted by ``REPLICAOF`` under a
worker blocked in its peek (``UNBLOCKED``, then ``READONLY`` on the connections still open) is
left for the new one.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import settings_from
from tests.utils.processes import (
    Service,
    celery_beat,
    celery_worker,
    courier_env,
    free_port,
    gunicorn,
    http_ok,
    wait_until,
)
from tests.utils.readiness import ReadyzWatch
from tests.utils.sentinel import MASTER, SENTINEL_PASSWORD, SentinelCluster
from worker.core.names import ENQUEUED_AT_HEADER, RECONCILE_TASK

# Beat's one periodic task (reconcile), this often, into a list no worker consumes: every
# message it sent is still there to count at the end.
BEAT_INTERVAL = 0.5
BEAT_QUEUE = "beat-only"
FLOWER_LOGIN = ("courier", "flower-sentinel-test")
WORKER_NAME = "clients"
TIMEOUT = 30.0
# The worker option that gives the demotion test its minute-long peek.
LONG_PEEK = "--include=tests.reliability.long_peek_worker"


# --- processes ------------------------------------------------------------------------------


def beat_env(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return {
        **env,
        "COURIER_QUEUES": BEAT_QUEUE,
        "COURIER_RECONCILE_INTERVAL_SECONDS": str(BEAT_INTERVAL),
        "COURIER_BEAT_SCHEDULE_FILE": str(tmp_path / "beat-schedule"),
    }


def flower(env: dict[str, str], log: Path, port: int) -> Service:
    """Flower as ``make up`` and the chart start it: Courier's app, so the Sentinel settings
    reach it through the app's broker transport options (no broker URL of its own)."""
    args = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "flower"]
    args += ["--address=127.0.0.1", f"--port={port}"]
    return Service(args, {**env, "FLOWER_BASIC_AUTH": ":".join(FLOWER_LOGIN)}, log)


def flower_lists_worker(url: str) -> bool:
    """Flower asks the workers again (a broadcast and its replies, through Redis) and lists
    ours."""
    try:
        response = httpx.get(
            f"{url}/api/workers", params={"refresh": 1}, auth=FLOWER_LOGIN, timeout=10
        )
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and any(
        name.startswith(f"{WORKER_NAME}@") for name in response.json()
    )


def flower_async_apply(url: str, echo: str) -> str:
    response = httpx.post(
        f"{url}/api/task/async-apply/noop",
        json={"kwargs": {"echo": echo}},
        auth=FLOWER_LOGIN,
        timeout=TIMEOUT,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["task-id"])


def started(service: Service, url: str, what: str) -> None:
    try:
        wait_until(lambda: http_ok(url), 60, what)
    except TimeoutError:
        raise AssertionError(f"{what}: {service.output()[-3000:]}") from None


# --- what is observed -----------------------------------------------------------------------


@contextlib.contextmanager
def watching(*urls: str) -> Iterator[list[ReadyzWatch]]:
    watches = [ReadyzWatch(url) for url in urls]
    threads = [threading.Thread(target=w.run, daemon=True) for w in watches]
    for thread in threads:
        thread.start()
    try:
        yield watches
    finally:
        for watch in watches:
            watch.stop.set()
        for thread in threads:
            thread.join(10)


@dataclass(frozen=True)
class Tick:
    task_id: str
    sent_at: float  # the producer's enqueue stamp: once per send, the same on a retried publish


def beat_ticks(client: redis.Redis) -> list[Tick]:
    """Beat's messages in its list, oldest first (kombu pushes on the left)."""
    ticks = []
    for raw in reversed(client.lrange(BEAT_QUEUE, 0, -1)):
        headers = json.loads(raw)["headers"]
        assert headers["task"] == RECONCILE_TASK, headers
        ticks.append(Tick(headers["id"], float(headers[ENQUEUED_AT_HEADER])))
    return ticks


def assert_each_tick_sent_once(ticks: list[Tick], beat: Service) -> None:
    """No message twice: a publish retried after Redis ran the first copy would repeat its task
    id. No tick twice: each send is one "Sending due task" line of beat's, logged once the entry
    was advanced, so two sends of one tick would be two lines less than an interval apart (the
    producer's stamps are not used for this: a send can wait in the result backend's
    reconnection, stamped only when it is published, just before the next tick's)."""
    ids = [tick.task_id for tick in ticks]
    assert len(ids) == len(set(ids)), f"a beat message stored twice: {len(ids)} {len(set(ids))}"
    sends = logged_at(beat, f"Scheduler: Sending due task {RECONCILE_TASK}")
    assert len(ticks) <= len(sends), (len(ticks), len(sends))
    gaps = [later - earlier for earlier, later in itertools.pairwise(sends)]
    assert min(gaps) > BEAT_INTERVAL / 2, f"two sends {min(gaps):.3f}s apart"


def beat_sends_after(cluster: SentinelCluster, moment: float, count: int = 2) -> None:
    """Beat's messages sent after ``moment`` arrive on the primary the Sentinels name now."""

    def arrived() -> bool:
        try:
            with cluster.data_client(cluster.primary_port()) as client:
                return sum(t.sent_at > moment for t in beat_ticks(client)) >= count
        except (redis.RedisError, RuntimeError):
            return False

    wait_until(arrived, TIMEOUT, "beat's messages on the new primary", interval=0.2)


def logged_at(service: Service, prefix: str) -> list[float]:
    """When ``service`` logged a message starting with ``prefix`` (its JSON log lines)."""
    moments = []
    for line in service.output().splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if str(entry.get("message", "")).startswith(prefix):
                moments.append(datetime.fromisoformat(entry["ts"]).timestamp())
    return moments


def succeeded(http: httpx.Client | TestClient, task_id: str) -> bool:
    try:
        return bool(http.get(f"/v1/tasks/{task_id}").json().get("status") == "succeeded")
    except (httpx.HTTPError, ValueError):
        return False


def submit(http: httpx.Client | TestClient, echo: str) -> str:
    """One task through the API; a 503 (no primary yet) is retried with the same key."""
    key = uuid.uuid4().hex

    def accepted() -> str | None:
        try:
            response = http.post(
                "/v1/tasks/noop", json={"echo": echo}, headers={"Idempotency-Key": key}
            )
        except httpx.HTTPError:
            return None
        if response.status_code == 503:
            return None
        assert response.status_code in (200, 202), response.text
        return str(response.json()["id"])

    return wait_until(accepted, TIMEOUT, "the API to accept a task", interval=0.1)


def runs(http: httpx.Client | TestClient, echo: str) -> None:
    task_id = submit(http, echo)
    wait_until(lambda: succeeded(http, task_id), TIMEOUT, f"task {echo} to succeed", 0.1)


# --- beat, Flower, readiness across a kill and a planned failover ---------------------------


def test_beat_flower_and_readiness_follow_a_kill_and_a_planned_failover(tmp_path: Path) -> None:
    api_port, worker_port, flower_port = free_port(), free_port(), free_port()
    api_url, worker_url = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{worker_port}"
    flower_url = f"http://127.0.0.1:{flower_port}"
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(SentinelCluster(tmp_path / "cluster"))
        env = courier_env(
            {
                **cluster.courier_vars(),
                "COURIER_API_BIND": f"127.0.0.1:{api_port}",
                "COURIER_API_WORKERS": "1",
                "COURIER_WORKER_METRICS_PORT": str(worker_port),
                "COURIER_WORKER_METRICS_HOST": "127.0.0.1",
            }
        )
        api = stack.enter_context(gunicorn(env, tmp_path / "api.log"))
        worker = stack.enter_context(celery_worker(env, tmp_path / "worker.log", WORKER_NAME))
        beat = stack.enter_context(celery_beat(beat_env(env, tmp_path), tmp_path / "beat.log"))
        started(api, f"{api_url}/readyz", "the API")
        started(worker, f"{worker_url}/readyz", "the worker")
        # After the worker: Flower asks the workers who they are once, at start.
        ui = stack.enter_context(flower(env, tmp_path / "flower.log", flower_port))
        wait_until(lambda: flower_lists_worker(flower_url), 60, "Flower to list the worker")
        http = stack.enter_context(httpx.Client(base_url=api_url, timeout=5))
        watches = stack.enter_context(watching(f"{api_url}/readyz", f"{worker_url}/readyz"))
        pids = {service: service.pid for service in (api, worker, beat, ui)}
        beat_sends_after(cluster, 0)

        windows: dict[str, tuple[float, float]] = {}
        for fault in ("kill", "demote"):
            fault_at = time.time()
            old = cluster.kill_primary() if fault == "kill" else cluster.demote_primary()
            cluster.wait_for_new_primary(old)
            # A demoted primary takes writes until Sentinel converts it (test_sentinel.py's
            # DEMOTE_LOSES_WRITES): what is checked below is sent once it follows.
            cluster.wait_settled()
            settled_at = time.time()
            for url in (f"{api_url}/readyz", f"{worker_url}/readyz"):
                wait_until(partial(http_ok, url), TIMEOUT, f"{url} after the {fault}")
            windows[fault] = (fault_at, time.time())
            runs(http, f"api after {fault}")
            beat_sends_after(cluster, settled_at)
            wait_until(lambda: flower_lists_worker(flower_url), TIMEOUT, "Flower's worker list")
            task_id = flower_async_apply(flower_url, f"flower after {fault}")
            wait_until(partial(succeeded, http, task_id), TIMEOUT, "Flower's task", 0.1)

        with cluster.data_client(cluster.primary_port()) as client:
            ticks = beat_ticks(client)
    api_ready, worker_ready = watches
    sends = beat.output().count(f"Sending due task {RECONCILE_TASK}")
    print(f"beat: {sends} sends, {len(ticks)} on the final primary;", windows)
    assert_each_tick_sent_once(ticks, beat)
    # No restart: every process that served before the faults served after them.
    for service, pid in pids.items():
        assert service.pid == pid and service.process.returncode in (None, 0, -15), service.log
    assert "Unrecoverable error" not in worker.output()
    # Readiness: 503 while no primary answered (the kill), 200 again after both faults.
    start, end = windows["kill"]
    for watch in (api_ready, worker_ready):
        assert 503 in watch.codes_between(start, end), (watch.url, watch.seen[-50:])
        assert watch.seen[-1][1] == 200, (watch.url, watch.seen[-5:])
    # The worker's 200 means it consumes again: none before its consumer reconnected (an
    # attempt that fails while no primary is named is tried again up to a second later).
    reconnected = min(at for at in logged_at(worker, "Connected to ") if at > start)
    print(f"kill: the worker's consumer connected again {reconnected - start:.1f}s after it")
    early = [(at, code) for at, code in worker_ready.seen if start < at < reconnected - 0.1]
    assert 200 not in {code for _, code in early}, (reconnected, early)


# --- a Sentinel that is down ----------------------------------------------------------------


@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_a_dead_sentinel_named_first_is_skipped_at_start_and_in_a_failover(
    tmp_path: Path, how: str
) -> None:
    """``killed``: its port refuses connections. ``frozen`` (SIGSTOP): its port takes them and
    never answers, so every lookup that asks it first waits out a socket timeout."""
    api_port, worker_port = free_port(), free_port()
    api_url, worker_url = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{worker_port}"
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(SentinelCluster(tmp_path / "cluster"))
        down = cluster.sentinels[0]
        if how == "killed":
            down.kill()
        else:
            assert down.process is not None
            pid = down.process.pid
            os.kill(pid, signal.SIGSTOP)
            # The test's own look-ups skip it (each would wait out its timeout, retried);
            # resumed, then stopped, at the end.
            stack.callback(down.stop)
            stack.callback(os.kill, pid, signal.SIGCONT)
        env = courier_env(
            {
                # COURIER_REDIS_SENTINELS keeps the dead one first.
                **cluster.courier_vars(),
                "COURIER_API_BIND": f"127.0.0.1:{api_port}",
                "COURIER_API_WORKERS": "1",
                "COURIER_WORKER_METRICS_PORT": str(worker_port),
                "COURIER_WORKER_METRICS_HOST": "127.0.0.1",
            }
        )
        assert env["COURIER_REDIS_SENTINELS"].startswith(f"127.0.0.1:{down.port},")
        if how == "frozen":
            cluster.sentinels.remove(down)
        api = stack.enter_context(gunicorn(env, tmp_path / "api.log"))
        worker = stack.enter_context(celery_worker(env, tmp_path / "worker.log", WORKER_NAME))
        beat = stack.enter_context(celery_beat(beat_env(env, tmp_path), tmp_path / "beat.log"))
        started(api, f"{api_url}/readyz", "the API")
        started(worker, f"{worker_url}/readyz", "the worker")
        http = stack.enter_context(httpx.Client(base_url=api_url, timeout=5))
        runs(http, "with a Sentinel down")
        beat_sends_after(cluster, 0)

        # Two Sentinels of three still make the quorum and the majority a failover needs.
        old = cluster.kill_primary()
        cluster.wait_for_new_primary(old)
        switched_at = time.time()
        for url in (f"{api_url}/readyz", f"{worker_url}/readyz"):
            wait_until(partial(http_ok, url), TIMEOUT, f"{url} after the failover")
        runs(http, "after the failover, a Sentinel down")
        beat_sends_after(cluster, switched_at)
        with cluster.data_client(cluster.primary_port()) as client:
            ticks = beat_ticks(client)
        for service in (api, worker, beat):
            assert service.process.poll() is None, service.output()[-3000:]
    assert_each_tick_sent_once(ticks, beat)
    assert "Unrecoverable error" not in worker.output()


@contextlib.contextmanager
def sentinels_down(how: str) -> Iterator[str]:
    """Three Sentinel addresses that do not answer: ``refused``, nothing listens there (a
    stopped process); ``silent``, a socket that takes connections and never replies (a frozen
    process, or a host whose kernel answers while its Sentinel hangs)."""
    if how == "refused":
        yield ",".join(f"127.0.0.1:{free_port()}" for _ in range(3))
        return
    with contextlib.ExitStack() as stack:
        listeners = [stack.enter_context(socket.socket()) for _ in range(3)]
        for listener in listeners:
            listener.bind(("127.0.0.1", 0))
            listener.listen(64)  # connections complete in the backlog; nobody reads them
        yield ",".join(f"127.0.0.1:{sock.getsockname()[1]}" for sock in listeners)


@pytest.mark.parametrize("how", ["refused", "silent"])
def test_with_every_sentinel_down_the_api_answers_503_json_without_hanging(
    tmp_path: Path, how: str
) -> None:
    api_port = free_port()
    with contextlib.ExitStack() as stack:
        env = courier_env(
            {
                "COURIER_REDIS_URL": "redis://:data-secret@127.0.0.1:1/0",
                "COURIER_REDIS_SENTINELS": stack.enter_context(sentinels_down(how)),
                "COURIER_REDIS_SENTINEL_MASTER": MASTER,
                "COURIER_REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
                "COURIER_API_BIND": f"127.0.0.1:{api_port}",
                "COURIER_API_WORKERS": "1",
            }
        )
        api = stack.enter_context(gunicorn(env, tmp_path / "api.log"))
        http = stack.enter_context(httpx.Client(base_url=f"http://127.0.0.1:{api_port}"))
        started(api, f"http://127.0.0.1:{api_port}/healthz", "the API")
        took: dict[str, float] = {}
        for path in ("/readyz", "/v1/tasks/noop", "/readyz"):
            began = time.monotonic()
            if path == "/readyz":
                answer = http.get(path, timeout=20)
            else:
                answer = http.post(path, json={"echo": "nowhere"}, timeout=20)
            took[path] = time.monotonic() - began
            assert answer.status_code == 503, answer.text
            assert answer.headers["content-type"].startswith("application/json"), answer.text
            if path == "/readyz":
                assert answer.json()["status"] == "unavailable", answer.text
                assert "MasterNotFound" in answer.json()["detail"], answer.text
            # No hang: each Sentinel costs a refused connection, or one socket timeout (1 s)
            # when it is silent; 20 s (the client's timeout) would be a hang.
            assert took[path] < 10, took
        print(f"every Sentinel {how}:", {k: round(v, 2) for k, v in took.items()})
        assert api.process.poll() is None
    assert "Traceback" not in api.output(), api.output()[-3000:]


# --- a primary demoted under a blocked consumer ---------------------------------------------


def blocked_in_peek(client: redis.Redis) -> bool:
    return any(
        entry.get("cmd") == "blmove" and "b" in entry.get("flags", "")
        for entry in client.client_list()
    )


def test_a_primary_demoted_by_replicaof_under_a_blocked_peek_is_left_for_the_new_one(
    tmp_path: Path,
) -> None:
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(SentinelCluster(tmp_path / "cluster"))
        env = courier_env(cluster.courier_vars())
        worker = stack.enter_context(
            celery_worker(
                env, tmp_path / "worker.log", WORKER_NAME, concurrency=1, extra_args=(LONG_PEEK,)
            )
        )
        api = stack.enter_context(TestClient(create_app(settings_from(cluster.courier_vars()))))
        # The pool child has used every client it has (records, start stamp, results): each
        # holds a connection to this primary when it is demoted.
        runs(api, "before the demotion")
        worker_pid = worker.pid

        old = cluster.primary_port()
        with cluster.data_client(old) as direct:
            wait_until(lambda: blocked_in_peek(direct), TIMEOUT, "the worker's peek to block")
            # Sentinel promotes a replica; the old primary is left as it is (Sentinel converts
            # it only some seconds later, killing its clients): in that window it is demoted
            # here by a plain REPLICAOF, which closes no connection. The blocked peek is
            # answered UNBLOCKED; the worker's other connections stay open to a replica, and a
            # write on one of them is answered READONLY.
            cluster.demote_primary()
            new = cluster.wait_for_new_primary(old)
            assert blocked_in_peek(direct), "the peek was no longer blocked on the old primary"
            direct.replicaof("127.0.0.1", new)
            assert direct.info("replication")["role"] == "slave"
        cluster.wait_settled()

        runs(api, "after the demotion")
        assert worker.process.poll() is None and worker.pid == worker_pid
        output = worker.output()
        assert "Unrecoverable error" not in output, output[-3000:]
        # One reconnection, straight to the new primary. Before: the Sentinel leading the
        # failover still named the demoted primary in SENTINEL MASTERS (what redis-py asks)
        # until the other replica had resynced, and the consumer went back to it, refused
        # ("The previous master is now a slave") five times a second for seconds.
        assert output.count("Connection to broker lost") == 1, output[-3000:]
        # The demoted server, a replica now, would refuse as READONLY ("The previous master is
        # now a slave"). The new primary refuses writes with NOREPLICAS until a replica has
        # attached (min-replicas-to-write 1): a reconnection that comes first, as it can on a
        # loaded machine, is refused so and tried again on the same new primary.
        refusals = [line for line in output.splitlines() if "Cannot connect" in line]
        assert all("NOREPLICAS" in line for line in refusals), output[-3000:]
        # The worker waits on the new primary now, and no longer on the old one.
        with cluster.data_client(new) as client:
            wait_until(lambda: blocked_in_peek(client), TIMEOUT, "the peek on the new primary")
        with cluster.data_client(old) as client:
            assert not blocked_in_peek(client)


@pytest.mark.parametrize("protocol", [2, 3])
def test_the_sentinel_leading_a_failover_is_not_taken_at_its_word(protocol: int) -> None:
    """Its SENTINEL MASTERS reply, as redis-py parses it over RESP2 (flags a string) and RESP3
    (a set): the primary it names mid-failover is the old one (the demotion test above shows
    it with real processes)."""
    from worker.core.redis_client import _settled

    def state(flags: str) -> dict[str, object]:
        return {"flags": flags if protocol == 2 else set(flags.split(","))}

    assert _settled(state("master"))
    assert not _settled(state("master,failover_in_progress,force_failover"))
    assert not _settled(state("master,s_down,o_down,failover_in_progress"))
