"""Scenario ``redis-work``: Redis commands, round trips and bytes per task, counted by Redis.

Counts, not timings: ``INFO commandstats`` (calls per command; commands a Lua script runs are
counted too, beside the ``evalsha`` that ran it) and ``INFO stats`` (``total_reads_processed``,
one per request read from a socket: a pipeline or a script is one; ``total_net_input_bytes`` /
``total_net_output_bytes``). Per system, on its own Redis:

1. *submit*: N no-ops queued with no worker running (Courier through its API, the seed's app
   with ``send_task``, dramatiq with ``send``);
2. *execute*: a worker (chart flags for Courier, the seed's flags for Celery, dramatiq's
   defaults) started on the full queue and left until it is drained, so every fetch is at queue
   depth; then the same worker, same duration, on an empty queue: that idle run (start-up,
   heartbeats, gauges, blocking waits) is subtracted;
3. *status read*: M reads of finished tasks (Courier ``GET /v1/tasks/{id}``, Celery
   ``AsyncResult(id).state``).

This suite's own polling (how it sees the drain end) is measured apart and subtracted, as is
the dramatiq job's ``INCRBY`` of the completion counter (redis-py's ``incr``).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import redis

from benchmarks.bare_celery import make_app
from benchmarks.client import submit_many
from benchmarks.drain import CHART, start_supervisor
from benchmarks.enqueue import backlog
from benchmarks.peers import DONE_KEY, PEERS, ensure_venv
from benchmarks.plan import Plan
from benchmarks.procs import ROOT, Stack, log, stack
from benchmarks.services import (
    Redis,
    start_bare_worker,
    start_courier_api,
    start_redis,
)
from benchmarks.stats import Figure
from worker.core.names import DEFAULT_QUEUE

SCENARIO = "7b redis work"
STATUS_READS = 200
POLL_SECONDS = 0.05
SETTLE_SECONDS = 1.0
# The suite's own commands, never the system's.
OWN_COMMANDS = ("info", "config|resetstat", "config")
DRAMATIQ = next(p for p in PEERS if "default" in p.label)


@dataclass
class Work:
    """Redis's counters over one phase: calls per command, reads, bytes in and out."""

    calls: Counter[str]
    reads: int
    bytes_in: int
    bytes_out: int

    def __sub__(self, other: Work) -> Work:
        calls = Counter(self.calls)
        calls.subtract(other.calls)
        return Work(
            calls,
            self.reads - other.reads,
            self.bytes_in - other.bytes_in,
            self.bytes_out - other.bytes_out,
        )

    def scaled(self, factor: float) -> Work:
        calls = Counter({k: round(v * factor) for k, v in self.calls.items()})
        return Work(calls, round(self.reads * factor), round(self.bytes_in * factor),
                    round(self.bytes_out * factor))  # fmt: skip

    @property
    def commands(self) -> int:
        return sum(self.calls.values())

    def per(self, n: int) -> dict[str, float]:
        return {
            "commands": self.commands / n,
            "round_trips": self.reads / n,
            "bytes_in": self.bytes_in / n,
            "bytes_out": self.bytes_out / n,
        }


def reset(client: redis.Redis) -> None:
    client.config_resetstat()


def snapshot(client: redis.Redis) -> Work:
    stats = client.info("stats")
    calls: Counter[str] = Counter()
    for name, values in client.info("commandstats").items():
        command = name.removeprefix("cmdstat_")
        if command not in OWN_COMMANDS:
            calls[command] = int(values["calls"])
    # The INFO replies themselves: two reads; their bytes are a few KB in total.
    reads = int(stats["total_reads_processed"]) - 2
    return Work(
        calls, reads, int(stats["total_net_input_bytes"]), int(stats["total_net_output_bytes"])
    )


def measure(client: redis.Redis, action: Callable[[], object]) -> Work:
    reset(client)
    action()
    return snapshot(client)


@dataclass
class System:
    label: str
    submit: Callable[[Stack, Redis, int], None]
    start_worker: Callable[[Stack, Redis], object]
    done: Callable[[redis.Redis, int], bool]  # one poll of the suite's
    status_read: Callable[[Stack, Redis, list[str]], Work] | None = None
    own_per_task: Counter[str] | None = None  # the benchmark job's own commands


def polls_until(client: redis.Redis, done: Callable[[redis.Redis, int], bool], n: int,
                timeout: float) -> int:  # fmt: skip
    polls = 0
    deadline = time.monotonic() + timeout
    while True:
        polls += 1
        if done(client, n):
            return polls
        if time.monotonic() > deadline:
            raise TimeoutError("the drain did not end")
        time.sleep(POLL_SECONDS)


def measure_system(system: System, plan: Plan, n: int) -> dict[str, Work]:
    with stack("redis-work") as s:
        r = start_redis(s)
        client = r.client()
        submit = measure(client, lambda: system.submit(s, r, n))
        poll = measure(client, lambda: [system.done(client, 1) for _ in range(100)])
        reset(client)
        started = time.monotonic()
        worker = system.start_worker(s, r)
        polls = polls_until(client, system.done, n, plan.drain_timeout)
        time.sleep(SETTLE_SECONDS)
        elapsed = time.monotonic() - started
        execute = snapshot(client) - poll.scaled(polls / 100)
        s.stop(worker.proc)  # type: ignore[attr-defined]
        reads = system.status_read(s, r, []) if system.status_read else None
        # The idle run: same worker, same duration, nothing queued.
        reset(client)
        idle_worker = system.start_worker(s, r)
        time.sleep(elapsed)
        idle = snapshot(client)
        s.stop(idle_worker.proc)  # type: ignore[attr-defined]
    executed = execute - idle
    if system.own_per_task:
        executed.calls.subtract(Counter({k: v * n for k, v in system.own_per_task.items()}))
    out = {"submit": submit, "execute": executed, "idle": idle}
    if reads:
        out["status"] = reads
    log(f"  {system.label}: execute {executed.per(n)} (idle {elapsed:.1f} s: {idle.commands})")
    return out


# --- Courier --------------------------------------------------------------------------------


def courier_submit(s: Stack, r: Redis, n: int) -> None:
    api = start_courier_api(s, r)
    reset(r.client())  # the API's start-up is not a submit
    submit_many(api.url, n)
    s.stop(api.proc)


def courier_worker(s: Stack, r: Redis) -> object:
    """As the chart ships it: the inline supervisor of 2, its pod port (queue gauges) on."""
    return start_supervisor(s, r, CHART, {"COURIER_LOG_LEVEL": "INFO"}, metrics=True)


def courier_status(s: Stack, r: Redis, _: list[str]) -> Work:
    client = r.client()
    ids = [k.decode().rsplit(":", 1)[1] for k in client.scan_iter("courier:task:*", 500)]
    ids = ids[:STATUS_READS]
    api = start_courier_api(s, r)
    with httpx.Client(base_url=api.url, timeout=10) as http:
        http.get(f"/v1/tasks/{ids[0]}").raise_for_status()  # its first connection, warm

        def read_all() -> None:
            for task_id in ids:
                http.get(f"/v1/tasks/{task_id}").raise_for_status()

        work = measure(client, read_all)
    s.stop(api.proc)
    return work.scaled(1 / len(ids))


def backlog_empty(queue: str) -> Callable[[redis.Redis, int], bool]:
    return lambda client, n: n == 0 or backlog(client, queue) == 0


# --- the seed's Celery app -----------------------------------------------------------------


def seed_submit(s: Stack, r: Redis, n: int) -> None:
    app = make_app(r.url, track_started=True)
    for i in range(n):
        app.send_task("noop", kwargs={"echo": i, "sleep_seconds": 0})


def seed_worker(s: Stack, r: Redis) -> object:
    return start_bare_worker(s, r, track_started=True, loglevel="info")


def seed_status(s: Stack, r: Redis, _: list[str]) -> Work:
    client = r.client()
    ids = [k.decode().removeprefix("celery-task-meta-")
           for k in client.scan_iter("celery-task-meta-*", 500)][:STATUS_READS]  # fmt: skip
    app = make_app(r.url, track_started=True)
    app.AsyncResult(ids[0]).state  # noqa: B018  # connect first
    work = measure(client, lambda: [app.AsyncResult(i).state for i in ids])
    return work.scaled(1 / len(ids))


# --- dramatiq ------------------------------------------------------------------------------


def dramatiq_submit(s: Stack, r: Redis, n: int) -> None:
    bin_dir = ensure_venv(DRAMATIQ.venv, DRAMATIQ.requirement)
    env = {**os.environ, "BENCH_REDIS_URL": r.url, "PYTHONPATH": str(ROOT)}
    module = f"benchmarks.peer_jobs.{DRAMATIQ.module}"
    subprocess.run([str(bin_dir / "python"), "-m", module, "enqueue", str(n)],
                   cwd=ROOT, env=env, check=True, timeout=300)  # fmt: skip


@dataclass
class _Proc:
    proc: subprocess.Popen[bytes]


def dramatiq_worker(s: Stack, r: Redis) -> object:
    bin_dir = ensure_venv(DRAMATIQ.venv, DRAMATIQ.requirement)
    (args,) = DRAMATIQ.workers
    env = {"BENCH_REDIS_URL": r.url, "PYTHONPATH": str(ROOT)}
    return _Proc(s.spawn([str(bin_dir / args[0]), *args[1:]], env))


def dramatiq_done(client: redis.Redis, n: int) -> bool:
    return n == 0 or int(client.get(DONE_KEY) or 0) >= n


SYSTEMS = [
    System("courier (chart flags)", courier_submit, courier_worker, backlog_empty(DEFAULT_QUEUE),
           courier_status),
    System("seed's Celery app", seed_submit, seed_worker, backlog_empty("celery"), seed_status),
    System(DRAMATIQ.label, dramatiq_submit, dramatiq_worker, dramatiq_done,
           own_per_task=Counter({"incrby": 1})),
]  # fmt: skip


def run(plan: Plan) -> list[Figure]:
    n = max(200, min(2_000, plan.tasks))
    log(f"{SCENARIO}: {n:,} no-op tasks per system, counted by Redis")
    works = {system.label: measure_system(system, plan, n) for system in SYSTEMS}
    courier, seed, dramatiq = (works[s.label] for s in SYSTEMS)
    per = {label: {phase: w.per(n) for phase, w in ws.items() if phase != "status"}
           for label, ws in works.items()}  # fmt: skip
    breakdown = {
        label: {k: v / n for k, v in sorted(ws["execute"].calls.items()) if round(v / n, 2)}
        for label, ws in works.items()
    }
    extra = {"tasks": n, "per_task": per, "execute_commands": breakdown}
    log(f"  Courier's commands per executed task: {breakdown[SYSTEMS[0].label]}")

    def fig(measure: str, unit: str, mine: float, base_label: str, base: float,
            **kw: object) -> Figure:  # fmt: skip
        return Figure(SCENARIO, measure, unit, [mine], base_label, [base], **kw)  # type: ignore[arg-type]

    c, b, d = (w["execute"].per(n) for w in (courier, seed, dramatiq))
    cs, bs, ds = (w["submit"].per(n) for w in (courier, seed, dramatiq))
    figures = [
        fig("commands per executed task, Courier", "commands", c["commands"], "seed's app",
            b["commands"], target="<= 8", target_value_max=8.0, extra=extra),
        fig("round trips per executed task, Courier", "reads", c["round_trips"], "seed's app",
            b["round_trips"], target="<= 2", target_value_max=2.0),
        fig("bytes in+out per executed task, Courier", "B", c["bytes_in"] + c["bytes_out"],
            "seed's app", b["bytes_in"] + b["bytes_out"]),
        fig("commands per executed task, dramatiq", "commands", d["commands"], "courier",
            c["commands"]),
        fig("round trips per executed task, dramatiq", "reads", d["round_trips"], "courier",
            c["round_trips"]),
        fig("bytes in+out per executed task, dramatiq", "B", d["bytes_in"] + d["bytes_out"],
            "courier", c["bytes_in"] + c["bytes_out"]),
        fig("commands per submit, Courier API", "commands", cs["commands"], "seed's app",
            bs["commands"], notes=f"dramatiq {ds['commands']:.2f}"),
        fig("round trips per submit, Courier API", "reads", cs["round_trips"], "seed's app",
            bs["round_trips"], notes=f"dramatiq {ds['round_trips']:.2f}"),
        fig("commands per status read, GET /v1/tasks/{id}", "commands",
            courier["status"].commands, "AsyncResult.state", seed["status"].commands,
            target="<= 3", target_value_max=3.0,
            extra={"courier": dict(courier["status"].calls)}),
    ]  # fmt: skip
    return figures
