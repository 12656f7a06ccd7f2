"""Scenario ``drain``: what the chart ships against the seed's Celery app, dramatiq, and one knob
at a time (the issue's 2x target).

``execution`` compares Courier with Celery's defaults, both quiet (``--loglevel=WARNING``) and
both fed raw messages. That is not what runs in production, and it hid most of the gap the issue
measured from outside (0.92x in ``make bench``, 0.53x outside):
- the chart runs the worker at ``--loglevel=INFO`` with ``COURIER_LOG_LEVEL=INFO``: Celery's
  "received" / "succeeded" lines per task, as JSON, written by the main process;
- the queue is filled through the API, so every task has a record the worker stamps;
- the seed's app stores STARTED (``task_track_started``) and logs at ``info`` too.

So here Courier runs with the chart's flags, its queue filled through its API (gunicorn, then
stopped before the worker starts), against the seed's app (``bare_celery`` with
``task_track_started``, Celery's worker defaults, ``--loglevel=info``) on its own Redis. The rate
is a steady-state one: the time from 10 % to 90 % of the tasks done (done = neither waiting nor
unacknowledged), so start-up, mingle and the tail are outside the window. Variants interleave
within a run, so machine noise hits them alike.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from benchmarks.bare_celery import make_app
from benchmarks.client import submit_many
from benchmarks.enqueue import backlog, capture_template, enqueue_raw
from benchmarks.peers import PEERS, measure_peer
from benchmarks.plan import Plan
from benchmarks.procs import Stack, free_port, log, stack
from benchmarks.services import (
    WORKER_FAST_FLAGS,
    Redis,
    Worker,
    courier_env,
    start_bare_worker,
    start_courier_api,
    start_courier_worker,
    start_redis,
)
from benchmarks.stats import Figure
from worker.core.names import DEFAULT_QUEUE

SCENARIO = "2b drain (chart flags)"
CHART_LOGLEVEL = "INFO"
STEADY_FROM, STEADY_TO = 0.10, 0.90


@dataclass(frozen=True)
class Courier:
    """Courier's worker with the chart's flags; each field is one knob away from the chart."""

    label: str
    app: str = "worker.celery_app"
    loglevel: str = CHART_LOGLEVEL
    through_api: bool = True  # False: raw messages, so no task records exist
    env: dict[str, str] = field(default_factory=dict)
    # ``pool`` "inline" runs as the chart runs its default ``worker.pool: inline``: one
    # supervisor (``python -m worker.supervisor --concurrency=2``) starting two one-process
    # inline workers; "prefork" as the chart's ``worker.pool: prefork``: one ``celery worker``,
    # prefork of 2 (``processes`` unused); "solo": ``processes`` workers with Celery's solo pool
    # (no time limits, no terminate). The same total concurrency, 2, for all three.
    processes: int = 2
    pool: str = "inline"


@dataclass(frozen=True)
class Celery:
    label: str
    track_started: bool = True
    loglevel: str = "info"


CHART = Courier("courier, chart flags (worker.pool: inline, supervisor --concurrency=2)")
PREFORK = Courier("courier, worker.pool: prefork (celery --concurrency=2)", pool="prefork")
SEED = Celery("seed's Celery app (track_started, info)")
KNOBS = [
    PREFORK,
    # The supervisor starts Courier's app only (worker.supervisor): this knob is prefork's.
    Courier(
        "courier, prefork, kombu's stock Redis transport",
        app="benchmarks.stock_transport_app",
        pool="prefork",
    ),
    Courier("courier, --loglevel=WARNING", loglevel="WARNING"),
    Courier("courier, no task records (raw messages)", through_api=False),
    Courier("courier, 2 x --pool=solo (no time limits, no terminate)", pool="solo"),
]
# What each knob is one knob away from (the stock transport: from prefork).
BASELINE = {KNOBS[1].label: PREFORK}
CELERY_QUIET = Celery("celery defaults, WARNING, no track_started", False, "WARNING")
DRAMATIQ = next(p for p in PEERS if "default" in p.label)


def steady_rate(client: redis.Redis, queue: str, total: int, timeout: float) -> float:
    """Tasks/s between 10 % and 90 % done, polled every 5 ms."""
    marks: list[float] = []
    deadline = time.monotonic() + timeout
    for fraction in (STEADY_FROM, STEADY_TO):
        target = total - int(total * fraction)  # backlog at that point
        while backlog(client, queue) > target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"drain stuck above {target} left of {total}")
            time.sleep(0.005)
        marks.append(time.monotonic())
    return total * (STEADY_TO - STEADY_FROM) / (marks[1] - marks[0])


def fill_courier(s: Stack, r: Redis, variant: Courier, tasks: int) -> None:
    if variant.through_api:
        api = start_courier_api(s, r, {"COURIER_LOG_LEVEL": variant.loglevel})
        submit_many(api.url, tasks)
        s.stop(api.proc)  # idle, but its CPU is not the worker's
        return
    from worker.celery_config import create_celery_app
    from worker.core.settings import Settings

    app = create_celery_app(Settings(redis_url=r.url))
    enqueue_raw(capture_template(app, r.client(), DEFAULT_QUEUE), r.client(), DEFAULT_QUEUE, tasks)


def start_courier_workers(s: Stack, r: Redis, variant: Courier) -> list[Worker]:
    """The worker(s) of ``variant``, not waited for: they take messages as soon as they can."""
    env = {"COURIER_LOG_LEVEL": variant.loglevel, **variant.env}
    if variant.pool == "prefork":
        return [
            start_courier_worker(
                s, r, [], env, wait=False, app=variant.app, loglevel=variant.loglevel
            )
        ]
    if variant.pool == "inline":
        if variant.app != Courier.app:
            raise ValueError("the inline supervisor starts worker.celery_app only")
        return [start_supervisor(s, r, variant, env)]
    args = [f"--pool={variant.pool}", "--concurrency=1"]
    return [
        start_courier_worker(
            s, r, args, env, name=f"{variant.pool}{i}",
            metrics=False, wait=False, app=variant.app, loglevel=variant.loglevel,
        )
        for i in range(variant.processes)
    ]  # fmt: skip


def start_supervisor(
    s: Stack, r: Redis, variant: Courier, env: dict[str, str], metrics: bool = False
) -> Worker:
    """The inline pool as the chart runs it: the supervisor and its ``processes`` children
    (the pool is chosen by its setting: Celery's --pool takes only Celery's own names).
    Without ``metrics``, as the solo variants, no pod port (its queue gauges poll Redis)."""
    env = courier_env(r, {**env, "COURIER_WORKER_POOL": "inline"})
    port = free_port() if metrics else 0
    env["COURIER_WORKER_METRICS_PORT"] = str(port)
    args = [
        sys.executable, "-m", "worker.supervisor", f"--concurrency={variant.processes}",
        *WORKER_FAST_FLAGS, f"--loglevel={variant.loglevel}", "-n", "inline@%h",
    ]  # fmt: skip
    return Worker(s.spawn(args, env), port)


def drain_courier(variant: Courier, plan: Plan) -> float:
    with stack("drain-courier") as s:
        r = start_redis(s)
        fill_courier(s, r, variant, plan.tasks)
        start_courier_workers(s, r, variant)
        return steady_rate(r.client(), DEFAULT_QUEUE, plan.tasks, plan.drain_timeout)


def fill_celery(r: Redis, variant: Celery, tasks: int) -> None:
    app = make_app(r.url, track_started=variant.track_started)
    enqueue_raw(capture_template(app, r.client(), "celery"), r.client(), "celery", tasks)


def start_celery_worker(s: Stack, r: Redis, variant: Celery) -> Worker:
    return start_bare_worker(s, r, track_started=variant.track_started, loglevel=variant.loglevel)


def drain_celery(variant: Celery, plan: Plan) -> float:
    with stack("drain-celery") as s:
        r = start_redis(s)
        fill_celery(r, variant, plan.tasks)
        start_celery_worker(s, r, variant)
        return steady_rate(r.client(), "celery", plan.tasks, plan.drain_timeout)


def run(plan: Plan) -> list[Figure]:
    measures: dict[str, Callable[[], float]] = {
        CHART.label: lambda: drain_courier(CHART, plan),
        SEED.label: lambda: drain_celery(SEED, plan),
        DRAMATIQ.label: lambda: measure_peer(DRAMATIQ, plan),
        CELERY_QUIET.label: lambda: drain_celery(CELERY_QUIET, plan),
        **{k.label: (lambda k=k: drain_courier(k, plan)) for k in KNOBS},  # type: ignore[misc]
    }
    rates: dict[str, list[float]] = {label: [] for label in measures}
    for i in range(plan.runs):
        log(f"{SCENARIO}: run {i + 1}/{plan.runs} ({plan.tasks:,} tasks per drain)")
        for label, measure in measures.items():
            rates[label].append(measure())
            if label != DRAMATIQ.label:  # measure_peer logs its own
                log(f"  {label}: {rates[label][-1]:,.0f} tasks/s")
    chart, seed = rates[CHART.label], rates[SEED.label]
    figures = [
        Figure(
            SCENARIO, "drain, Courier (chart flags)", "tasks/s", chart, SEED.label, seed,
            target=">= 2x the seed's app", target_ratio_min=2.0,
        ),
        Figure(
            SCENARIO, f"drain, {DRAMATIQ.label}", "jobs/s", rates[DRAMATIQ.label],
            CHART.label, chart, notes="goal: Courier ahead of it (ratio < 1)",
        ),
        Figure(
            SCENARIO, f"drain, {CELERY_QUIET.label}", "tasks/s", rates[CELERY_QUIET.label],
            SEED.label, seed, notes="what `execution` compares against",
        ),
    ]  # fmt: skip
    for k in KNOBS:
        base = BASELINE.get(k.label, CHART).label
        figures.append(
            Figure(SCENARIO, f"drain, {k.label}", "tasks/s", rates[k.label], base, rates[base])
        )
    return figures
