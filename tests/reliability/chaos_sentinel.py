"""Sentinel faults under load: what a failover does to accepted tasks (issue 14, item 5).

Three redis-servers and three Sentinels on loopback (``tests/utils/sentinel.py``, down-after
1000 ms), the API under gunicorn with a well-behaved client submitting continuously (a 503 or a
dropped connection is retried with the same Idempotency-Key), two Celery workers running noop
tasks of 0.2 s. Each fault is injected ``repeats`` times on one running stack; then the stack
settles (every replica follows the primary the Sentinels name, abandoned messages come back
after the short visibility timeout) and every accepted task is checked.

What ran is not read from Redis, which a failover can roll back along with the records that
count executions: the workers write a ledger outside it (``chaos_ledger.py``). Per fault:

- lost: accepted (202) and never completed by a worker: must be 0;
- duplicated: tasks a worker started more than once (at-least-once allows it);
- wrong statuses: the status API says something other than ``succeeded`` for a task that
  completed, or ``succeeded`` for one that never did: must be 0;
- 503 window: first to last 503 or connection error the client saw around a fault (the
  longest over the repetitions);
- resumed: from the fault until a worker started a task accepted after it (the longest);
  the issue's goal is under 5 s with down-after 1000 ms.

``make chaos`` runs it at full scale after the standalone scenarios (``--only sentinel``
alone); ``test_chaos_sentinel.py`` at one or two repetitions.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.reliability.chaos_ledger import INCLUDE, LEDGER_DIR, read_ledger
from tests.reliability.workdirs import scenario_dir
from tests.utils.netns import NetworkLink
from tests.utils.processes import (
    Service,
    celery_worker,
    child_pids,
    courier_env,
    free_port,
    gunicorn,
    http_ok,
    wait_until,
)
from tests.utils.sentinel import NamespacedSentinelCluster, SentinelCluster
from worker.celery_config import PRIORITY_STEPS
from worker.core.names import DEFAULT_QUEUE
from worker.core.queue_stats import QueueInspector
from worker.core.redis_client import create_redis
from worker.core.settings import Settings

FAULTS = (
    "kill-primary",
    "planned-failover",
    "freeze-primary",
    "kill-sentinel",
    "partition-primary",
)
FAULT_TITLES = {
    "kill-primary": "SIGKILL of the primary",
    "planned-failover": "SENTINEL FAILOVER (planned)",
    "freeze-primary": "primary SIGSTOP > down-after, then SIGCONT",
    "kill-sentinel": "SIGKILL of the first Sentinel",
    "partition-primary": "primary cut off (network namespace)",
}
TASK_SECONDS = 0.2
VISIBILITY_TIMEOUT = 10
# A task not finished this long after the last completion will not finish: redelivery of an
# abandoned message takes the visibility timeout plus one restore sweep (1 s here).
QUIET_FOR = 2 * VISIBILITY_TIMEOUT + 5
# How long a frozen primary or a cut link stays so after the Sentinels named another primary:
# clients and the old primary's own timers see a real outage, not a blip.
OUTAGE_AFTER_SWITCH = 1.5


@dataclass
class SentinelFigures:
    fault: str
    repeats: int = 0
    submitted: int = 0
    accepted: int = 0
    succeeded: int = 0
    lost: int = 0
    duplicated: int = 0
    wrong_status: int = 0
    refusals: int = 0
    window_503_s: float = 0.0
    resumed_s: float | None = 0.0
    notes: dict[str, Any] = field(default_factory=dict)

    def row(self) -> str:
        notes = ", ".join(f"{k}={v}" for k, v in self.notes.items())
        resumed = "never" if self.resumed_s is None else f"{self.resumed_s:.1f}"
        return (
            f"| {FAULT_TITLES[self.fault]} | {self.repeats} | {self.submitted} | {self.accepted} "
            f"| {self.succeeded} | {self.lost} | {self.duplicated} | {self.wrong_status} "
            f"| {self.window_503_s:.1f} ({self.refusals}) | {resumed} | {notes} |"
        )


TABLE_HEADER = (
    "| Sentinel fault | times | submitted | accepted | succeeded | lost | duplicated "
    "| wrong status | 503 window s (503s) | workers resumed after s | notes |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


@dataclass
class Submitter:
    """A well-behaved client at about ``rate`` submits a second: a 503 or a dropped connection
    is retried with the same Idempotency-Key until it is accepted (or the run ends)."""

    base: str
    rate: float
    accepted: dict[str, tuple[str, float]] = field(default_factory=dict)  # key -> (id, when)
    submitted: int = 0
    refused_at: list[float] = field(default_factory=list)  # every 503 or connection error
    unexpected: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=5) as http:
            while not self.stop.is_set():
                key = uuid.uuid4().hex
                self.submitted += 1
                while not self.stop.is_set() and not self._submit(http, key):
                    time.sleep(0.05)
                time.sleep(1 / self.rate)

    def _submit(self, http: httpx.Client, key: str) -> bool:
        """True once accepted (202, or 200 for a retry the API had already accepted)."""
        try:
            response = http.post(
                "/v1/tasks/noop",
                json={"echo": key, "sleep_seconds": TASK_SECONDS},
                headers={"Idempotency-Key": key},
            )
        except httpx.HTTPError:
            self.refused_at.append(time.time())
            return False
        if response.status_code in (200, 202):
            self.accepted[key] = (response.json()["id"], time.time())
            return True
        if response.status_code != 503:
            self.unexpected.append(f"{response.status_code} {response.text[:200]}")
        self.refused_at.append(time.time())
        return False

    def ids(self) -> list[str]:
        return [task_id for task_id, _ in list(self.accepted.values())]

    def accepted_after(self, moment: float) -> set[str]:
        return {task_id for task_id, at in list(self.accepted.values()) if at > moment}


class SentinelStack:
    """The API (gunicorn) and two workers on ``cluster``, a Submitter feeding them."""

    def __init__(
        self,
        cluster: SentinelCluster,
        workdir: Path,
        rate: float = 8.0,
        visibility_timeout: int = VISIBILITY_TIMEOUT,
        pool: str = "prefork",
    ) -> None:
        self.cluster = cluster
        self.pool = pool
        self.workdir = workdir
        self.ledger = workdir / "ledger"
        self.ledger.mkdir(parents=True, exist_ok=True)
        api_port = free_port()
        self.base = f"http://127.0.0.1:{api_port}"
        self.env = courier_env(
            {
                **cluster.courier_vars(),
                "COURIER_API_BIND": f"127.0.0.1:{api_port}",
                "COURIER_API_WORKERS": "1",
                "COURIER_BROKER_VISIBILITY_TIMEOUT": str(visibility_timeout),
                LEDGER_DIR: str(self.ledger),
            }
        )
        self.submitter = Submitter(self.base, rate)
        self.workers: list[Service] = []
        self.fresh_clients_ok: list[bool] = []  # kill-sentinel: a new client found the primary
        self.in_flight_when_done = 0  # messages still in flight when every task had run once
        self.early_statuses: dict[str, int] = {}  # then: statuses other than succeeded
        self.in_flight_at_end = 0  # still in flight when statuses were read
        self.sweep_lock_ms: int | None = None  # then: the sweep lock's remaining life
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> SentinelStack:
        with contextlib.ExitStack() as stack:
            stack.enter_context(gunicorn(self.env, self.workdir / "api.log"))
            for name in ("w1", "w2"):
                log = self.workdir / f"{name}.log"
                worker = celery_worker(
                    self.env, log, name, concurrency=2, extra_args=(INCLUDE,), pool=self.pool
                )
                self.workers.append(stack.enter_context(worker))
            wait_until(lambda: http_ok(f"{self.base}/readyz"), 60, "the API")
            thread = threading.Thread(target=self.submitter.run, daemon=True)
            thread.start()
            stack.callback(thread.join, 15)
            stack.callback(self.submitter.stop.set)
            # Both workers consume before any fault.
            wait_until(lambda: self._workers_seen() == 2, 90, "both workers to run tasks")
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _workers_seen(self) -> int:
        """How many workers have run a task: a pool child of theirs (inline: the worker
        itself) wrote a ledger."""
        pids = {path.stem.removeprefix("ledger-") for path in self.ledger.glob("ledger-*.log")}
        return sum(
            any(str(pid) in pids for pid in (worker.pid, *child_pids(worker.pid)))
            for worker in self.workers
        )

    def resumed_after(self, moment: float, timeout: float = 60) -> float | None:
        """Seconds from ``moment`` until a worker started a task accepted after it."""

        def first_start() -> float | None:
            after = self.submitter.accepted_after(moment)
            starts, _ = read_ledger(self.ledger)
            times = [min(starts[t]) for t in after if t in starts]
            return min(times) if times else None

        try:
            return wait_until(first_start, timeout, "a task accepted after the fault to run", 0.1)
        except TimeoutError:
            return None

    def settle(self) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
        """Stop submitting, let the cluster settle and the workers finish what will finish.

        Every task having run once is not enough: a result stored on a primary killed before
        its replicas had it is lost with it, while the message's ``unacked`` entry (written
        earlier) reached the new primary; that task reads ``started`` until the entry comes
        back after the visibility timeout and the task runs again (seen in CI: 2 of 61 read
        ``started`` when read at once). So statuses are read once nothing is in flight: no
        message queued or unacknowledged on the primary the Sentinels name."""
        self.submitter.stop.set()
        self.cluster.wait_settled()
        ids = set(self.submitter.ids())
        last_progress, last_done = time.monotonic(), -1
        while True:
            starts, done = read_ledger(self.ledger)
            finished = len(ids & done.keys())
            if finished == len(ids):
                break
            if finished != last_done:
                last_progress, last_done = time.monotonic(), finished
            elif time.monotonic() - last_progress > QUIET_FOR:
                return starts, done
            time.sleep(0.5)
        self.in_flight_when_done = self.in_flight()
        if self.in_flight_when_done:
            early = self.statuses(sorted(ids))
            self.early_statuses = dict(Counter(s for s in early.values() if s != "succeeded"))
        deadline = time.monotonic() + QUIET_FOR
        while self.in_flight() and time.monotonic() < deadline:
            time.sleep(0.5)
        self.in_flight_at_end = self.in_flight()
        if self.in_flight_at_end:
            self.sweep_lock_ms = self._sweep_lock_ms()
        return read_ledger(self.ledger)

    def _sweep_lock_ms(self) -> int | None:
        """What is left of the restore sweep's lock on the named primary (ms; -2: none): a
        lock a failover carried over without its release stops every sweep while it lives."""
        return self._on_primary(lambda client: int(client.pttl("unacked_mutex")))

    def in_flight(self) -> int:
        """Messages queued or delivered and not acknowledged, on the named primary; -1 when it
        did not answer."""

        def count(client: redis.Redis) -> int:
            (queue,) = QueueInspector(client, [DEFAULT_QUEUE], PRIORITY_STEPS).stats()
            return queue.waiting + queue.reserved + queue.delayed

        answer = self._on_primary(count)
        return -1 if answer is None else answer

    def _on_primary(self, read: Callable[[redis.Redis], int]) -> int | None:
        """``read`` on the primary the Sentinels name; None when it did not answer."""
        with (
            contextlib.suppress(redis.RedisError, RuntimeError),
            self.cluster.data_client(self.cluster.primary_port()) as client,
        ):
            return read(client)
        return None

    def statuses(self, ids: list[str]) -> dict[str, str]:
        result: dict[str, str] = {}
        with httpx.Client(base_url=self.base, timeout=5) as http:
            for task_id in ids:
                response = http.get(f"/v1/tasks/{task_id}")
                ok = response.status_code == 200
                result[task_id] = str(response.json().get("status")) if ok else "404"
        return result


# --- the faults: one repetition each, returning when the fault happened (unix time) -----------


def _kill(stack: SentinelStack) -> float:
    cluster = stack.cluster
    old = cluster.kill_primary()
    at = time.time()
    cluster.wait_for_new_primary(old)
    stack.resumed_after(at)
    cluster.restart_as_replica(old)
    return at


def _demote(stack: SentinelStack) -> float:
    at = time.time()
    old = stack.cluster.demote_primary()
    stack.cluster.wait_for_new_primary(old)
    return at


def _freeze(stack: SentinelStack) -> float:
    cluster = stack.cluster
    old = cluster.freeze_primary()
    at = time.time()
    try:
        cluster.wait_for_new_primary(old)
        time.sleep(OUTAGE_AFTER_SWITCH)
    finally:
        cluster.thaw(old)
    return at


def _kill_sentinel(stack: SentinelStack) -> float:
    stack.cluster.kill_sentinel(0)
    at = time.time()
    stack.resumed_after(at)
    # A process starting now (a new pod) is given the dead Sentinel first and must find the
    # primary through the next one.
    stack.fresh_clients_ok.append(_fresh_client_writes(stack.cluster))
    time.sleep(2)
    stack.cluster.restart_sentinel(0)
    return at


def _fresh_client_writes(cluster: SentinelCluster) -> bool:
    fields = {k.removeprefix("COURIER_").lower(): v for k, v in cluster.courier_vars().items()}
    client = create_redis(Settings.model_validate(fields))
    try:
        return bool(client.set("chaos:fresh-client", "found the primary"))
    except redis.RedisError:
        return False
    finally:
        client.close()


def _cut(stack: SentinelStack) -> float:
    cluster = stack.cluster
    assert isinstance(cluster, NamespacedSentinelCluster)
    old = cluster.primary_port()
    assert old == cluster.servers[0].port, "the namespaced server is not the primary"
    cluster.link.cut()
    at = time.time()
    try:
        cluster.wait_for_new_primary(old)
        time.sleep(OUTAGE_AFTER_SWITCH)
    finally:
        cluster.link.heal()
    return at


INJECT: dict[str, Callable[[SentinelStack], float]] = {
    "kill-primary": _kill,
    "planned-failover": _demote,
    "freeze-primary": _freeze,
    "kill-sentinel": _kill_sentinel,
    "partition-primary": _cut,
}


@dataclass
class Repetition:
    fault_at: float
    ended_at: float
    resumed_s: float | None


def _inject(stack: SentinelStack, fault: str, repeats: int, steady: float) -> list[Repetition]:
    reps = []
    for _ in range(repeats):
        time.sleep(steady)
        at = INJECT[fault](stack)
        resumed = stack.resumed_after(at)
        stack.cluster.wait_settled()
        reps.append(Repetition(at, time.time(), None if resumed is None else resumed - at))
    time.sleep(steady)
    return reps


@contextlib.contextmanager
def _cluster(fault: str, workdir: Path) -> Iterator[SentinelCluster]:
    if fault != "partition-primary":
        with SentinelCluster(workdir / "cluster") as cluster:
            yield cluster
        return
    with NetworkLink() as link, NamespacedSentinelCluster(workdir / "cluster", link) as cluster:
        yield cluster


def _one_stack(
    fault: str, repeats: int, workdir: Path, rate: float, steady: float, pool: str = "prefork"
) -> tuple[SentinelFigures, list[Repetition]]:
    figures = SentinelFigures(fault, repeats=repeats)
    with (
        _cluster(fault, workdir) as cluster,
        SentinelStack(cluster, workdir, rate, pool=pool) as stack,
    ):
        reps = _inject(stack, fault, repeats, steady)
        starts, done = stack.settle()
        submitter = stack.submitter
        ids = submitter.ids()
        statuses = stack.statuses(ids)
    figures.submitted, figures.accepted = submitter.submitted, len(ids)
    ran = {task_id for task_id in ids if task_id in done}
    figures.succeeded = len(ran)
    figures.lost = len(ids) - len(ran)
    figures.duplicated = sum(len(starts.get(task_id, [])) > 1 for task_id in ids)
    wrong = [task_id for task_id in ids if (task_id in ran) != (statuses[task_id] == "succeeded")]
    figures.wrong_status = len(wrong)
    if figures.lost:
        figures.notes["lost_status"] = dict(Counter(statuses[t] for t in ids if t not in ran))
    if wrong:
        figures.notes["wrong_as"] = dict(Counter(statuses[t] for t in wrong))
    if stack.in_flight_when_done:
        figures.notes["in_flight_when_done"] = stack.in_flight_when_done
        figures.notes["read_then_as"] = stack.early_statuses
    if stack.in_flight_at_end:
        figures.notes["in_flight_at_end"] = stack.in_flight_at_end
        figures.notes["sweep_lock_ms"] = stack.sweep_lock_ms
    if stack.fresh_clients_ok:
        figures.notes["new_client_ok"] = all(stack.fresh_clients_ok)
    if submitter.unexpected:
        figures.notes["unexpected"] = submitter.unexpected[:3]
    for rep in reps:
        refused = [at for at in submitter.refused_at if rep.fault_at - 0.5 <= at <= rep.ended_at]
        figures.refusals += len(refused)
        window = max(refused) - min(refused) if refused else 0.0
        figures.window_503_s = max(figures.window_503_s, window)
    return figures, reps


def sentinel_fault(
    fault: str,
    repeats: int,
    rate: float = 8.0,
    steady: float = 3.0,
    workdir: Path | None = None,
    pool: str = "prefork",
) -> SentinelFigures:
    """``repeats`` injections of ``fault`` under load, the workers on ``pool``; figures over all
    of them. The partition needs its namespaced server as the primary, so each of its
    repetitions gets a fresh stack."""
    with scenario_dir("courier-chaos-sentinel-") as tmp:
        base = workdir or tmp
        if fault != "partition-primary":
            figures, reps = _one_stack(fault, repeats, base, rate, steady, pool)
        else:
            parts = [
                _one_stack(fault, 1, base / f"rep-{n}", rate, steady, pool) for n in range(repeats)
            ]
            figures, reps = _sum(fault, [p[0] for p in parts]), [r for p in parts for r in p[1]]
    resumed = [rep.resumed_s for rep in reps]
    figures.resumed_s = None if None in resumed else max(r for r in resumed if r is not None)
    figures.notes["resumed_each"] = [None if r is None else round(r, 1) for r in resumed]
    return figures


def _sum(fault: str, parts: list[SentinelFigures]) -> SentinelFigures:
    total = SentinelFigures(fault, repeats=len(parts))
    for part in parts:
        for name in ("submitted", "accepted", "succeeded", "lost", "duplicated", "wrong_status"):
            setattr(total, name, getattr(total, name) + getattr(part, name))
        total.refusals += part.refusals
        total.window_503_s = max(total.window_503_s, part.window_503_s)
        for key, value in part.notes.items():
            if isinstance(value, dict):
                merged = Counter(total.notes.get(key, {}))
                merged.update(value)
                total.notes[key] = dict(merged)
    return total


def run_all(repeats: int, only: str | None = None) -> list[str]:
    """Every fault (or those whose name contains ``only``): their table rows, printed as they
    come (stderr) so a long run shows progress."""
    rows = []
    for fault in FAULTS:
        if only and only not in f"sentinel {fault}":
            continue
        figures = sentinel_fault(fault, repeats)
        print(figures.row(), file=sys.stderr, flush=True)
        rows.append(figures.row())
    return rows
