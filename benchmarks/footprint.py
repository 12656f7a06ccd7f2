"""Scenario 7: Redis memory per queued task and per stored result, and that expiry bounds it.

``INFO memory used_memory`` deltas: N tasks submitted over Courier's API with no worker running
(message + task record), then drained (result + record); the baseline is the same N messages
from bare Celery (``send_task``'s message, cloned) and its stored results. Last, with
``COURIER_RESULT_EXPIRES=5``, N tasks run and then Redis is watched until they expire.
"""

from __future__ import annotations

import time

import redis

from benchmarks.bare_celery import make_app
from benchmarks.client import submit_many
from benchmarks.enqueue import capture_template, enqueue_raw
from benchmarks.memory import wait_drained
from benchmarks.plan import Plan
from benchmarks.procs import log, stack
from benchmarks.services import (
    start_bare_worker,
    start_courier_api,
    start_courier_worker,
    start_redis,
)
from benchmarks.stats import Figure
from worker.core.names import DEFAULT_QUEUE

SCENARIO = "7 redis"
EXPIRES = 5


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def measure_courier(plan: Plan) -> tuple[float, float]:
    with stack("footprint") as s:
        r = start_redis(s)
        client = r.client()
        api = start_courier_api(s, r)
        before = used_memory(client)
        submit_many(api.url, plan.footprint_tasks)
        queued = used_memory(client)
        start_courier_worker(s, r)
        wait_drained(client, DEFAULT_QUEUE, plan.drain_timeout)
        stored = used_memory(client)
    n = plan.footprint_tasks
    return (queued - before) / n, (stored - before) / n


def measure_bare(plan: Plan) -> tuple[float, float]:
    with stack("footprint-bare") as s:
        r = start_redis(s)
        client = r.client()
        template = capture_template(make_app(r.url), client, "celery")
        before = used_memory(client)
        enqueue_raw(template, client, "celery", plan.footprint_tasks)
        queued = used_memory(client)
        start_bare_worker(s, r)
        wait_drained(client, "celery", plan.drain_timeout)
        stored = used_memory(client)
    n = plan.footprint_tasks
    return (queued - before) / n, (stored - before) / n


def measure_expiry(plan: Plan) -> tuple[float, float, float]:
    """Bytes per task right after the drain, and once expired; seconds it took to fall."""
    env = {"COURIER_RESULT_EXPIRES": str(EXPIRES)}
    with stack("footprint-expiry") as s:
        r = start_redis(s)
        client = r.client()
        api = start_courier_api(s, r, env)
        start_courier_worker(s, r, extra=env)
        before, keys_before = used_memory(client), client.dbsize()
        submit_many(api.url, plan.footprint_tasks)
        wait_drained(client, DEFAULT_QUEUE, plan.drain_timeout)
        peak = used_memory(client)
        drained_at = time.monotonic()
        # Redis expires keys in its active cycle: wait (a few TTLs at most) until the task keys
        # are gone. What remains is hash-table slack Redis keeps until it next resizes.
        while time.monotonic() - drained_at < EXPIRES * 6:
            time.sleep(0.5)
            if client.dbsize() <= keys_before + 10:
                break
        after = used_memory(client)
        n = plan.footprint_tasks
        return (peak - before) / n, (after - before) / n, time.monotonic() - drained_at


def run(plan: Plan) -> list[Figure]:
    queued: list[float] = []
    stored: list[float] = []
    bare_queued: list[float] = []
    bare_stored: list[float] = []
    peak: list[float] = []
    expired: list[float] = []
    for i in range(plan.runs):
        log(f"{SCENARIO}: run {i + 1}/{plan.runs} ({plan.footprint_tasks:,} tasks)")
        q, st = measure_courier(plan)
        bq, bs = measure_bare(plan)
        p, e, took = measure_expiry(plan)
        for series, value in zip(
            (queued, stored, bare_queued, bare_stored, peak, expired),
            (q, st, bq, bs, p, e),
            strict=True,
        ):
            series.append(value)
        log(f"  queued {q:.0f} B/task (bare {bq:.0f}), stored {st:.0f} B/task (bare {bs:.0f})")
        log(f"  expiry {EXPIRES} s: {p:.0f} -> {e:.0f} B/task within {took:.1f} s")
    return [
        Figure(
            SCENARIO, "used_memory per queued noop (API: message + record)", "B",
            queued, "bare Celery message", bare_queued, target="< 1 KiB",
            target_value_max=1024,
        ),
        Figure(
            SCENARIO, "used_memory per stored result (result + record)", "B",
            stored, "bare Celery result", bare_stored,
        ),
        Figure(
            SCENARIO, f"per task after expiry (COURIER_RESULT_EXPIRES={EXPIRES})", "B",
            expired, "right after the drain", peak, target="bounded (-> ~0)",
        ),
    ]  # fmt: skip
