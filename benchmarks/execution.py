"""Scenario 2: execution throughput, Courier's worker vs Celery out of the box, and the knobs.

Each run: a fresh Redis, N no-op messages queued before any worker starts (real protocol-2
messages, see ``enqueue``), then one worker (prefork, concurrency 2) is started and timed from
the first message taken to the last acknowledged. Variants are interleaved within a run so
machine noise hits them alike. ``acks_late`` stays on in every Courier variant (at-least-once).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from celery import Celery

from benchmarks.bare_celery import make_app
from benchmarks.enqueue import Drain, capture_template, enqueue_raw, time_drain
from benchmarks.plan import Plan
from benchmarks.procs import log, stack
from benchmarks.services import Redis, start_bare_worker, start_courier_worker, start_redis
from benchmarks.stats import Figure
from worker.core.names import DEFAULT_QUEUE

SCENARIO = "2 execution"
# Courier's default drain rates of this suite run, by plan, so the peers scenario (which runs
# next) compares against them instead of draining Courier again.
COURIER_RATES: dict[Plan, list[float]] = {}


@dataclass(frozen=True)
class Variant:
    label: str
    bare: bool = False
    flags: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    ignore_result: bool = False


COURIER = Variant("courier defaults")
BARE = Variant("celery defaults", bare=True)
KNOBS = [
    Variant("--without-heartbeat", flags=("--without-heartbeat",)),
    Variant("prefetch 4", env={"COURIER_WORKER_PREFETCH_MULTIPLIER": "4"}),
    Variant("prefetch 16", env={"COURIER_WORKER_PREFETCH_MULTIPLIER": "16"}),
    # What a running Flower costs: it turns task events on in every worker.
    Variant("COURIER_TASK_EVENTS=true", env={"COURIER_TASK_EVENTS": "true"}),
    Variant("--pool=threads", flags=("--pool=threads",)),
    Variant(
        "tuned: prefetch 4 + no heartbeat",
        flags=("--without-heartbeat",),
        env={"COURIER_WORKER_PREFETCH_MULTIPLIER": "4"},
    ),
]
BARE_NO_RESULT = Variant("celery defaults, ignore_result=True", bare=True, ignore_result=True)


def producer_app(variant: Variant, r: Redis) -> tuple[Celery, str]:
    if variant.bare:
        return make_app(r.url, variant.ignore_result), "celery"
    from worker.celery_config import create_celery_app
    from worker.core.settings import Settings

    return create_celery_app(Settings(redis_url=r.url)), DEFAULT_QUEUE


def measure_drain(
    variant: Variant, plan: Plan, extra_env: dict[str, str] | None = None, label: str = ""
) -> Drain:
    """One drain of ``plan.tasks`` no-ops by one worker of ``variant``, in its own stack."""
    with stack("drain") as s:
        r = start_redis(s)
        client = r.client()
        app, queue = producer_app(variant, r)
        enqueue_raw(capture_template(app, client, queue), client, queue, plan.tasks)
        if variant.bare:
            start_bare_worker(s, r, list(variant.flags), variant.ignore_result)
        else:
            env = {**variant.env, **(extra_env or {})}
            start_courier_worker(s, r, list(variant.flags), env, wait=False)
        drain = time_drain(client, queue, plan.tasks, plan.drain_timeout)
    log(f"  {label or variant.label}: {drain.rate:,.0f} tasks/s")
    return drain


def run(plan: Plan) -> list[Figure]:
    variants = [COURIER, BARE, BARE_NO_RESULT, *KNOBS]
    rates: dict[str, list[float]] = {v.label: [] for v in variants}
    for i in range(plan.runs):
        log(f"{SCENARIO}: run {i + 1}/{plan.runs} ({plan.tasks:,} tasks per drain)")
        for variant in variants:
            rates[variant.label].append(measure_drain(variant, plan).rate)
    COURIER_RATES[plan] = rates[COURIER.label]
    figures = [
        Figure(
            SCENARIO, "drain, Courier defaults", "tasks/s",
            rates[COURIER.label], "celery defaults", rates[BARE.label],
            target=">= 2x celery defaults", target_ratio_min=2.0,
        ),
        Figure(
            SCENARIO, "drain, celery ignore_result=True (result cost)", "tasks/s",
            rates[BARE_NO_RESULT.label], "celery defaults", rates[BARE.label],
        ),
    ]  # fmt: skip
    figures += [
        Figure(
            SCENARIO,
            f"drain, Courier {v.label}",
            "tasks/s",
            rates[v.label],
            "courier defaults",
            rates[COURIER.label],
        )
        for v in KNOBS
    ]
    return figures
