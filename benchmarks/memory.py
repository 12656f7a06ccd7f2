"""Scenario 6: resident memory of an API worker and a Celery pool child, and its growth.

RSS (``VmRSS`` in ``/proc/<pid>/status``, the largest child of each kind) after N tasks
submitted over HTTP and executed, against the bare FastAPI app and bare Celery worker after the
same N; then a soak at a steady ~100 tasks/s, sampling every 5 s: growth is the last sample
over the first (after warm-up). One run: the soak is long, and growth is itself a ratio.
"""

from __future__ import annotations

import subprocess
import time

import redis

from benchmarks.client import submit_many, submit_steady
from benchmarks.enqueue import backlog
from benchmarks.plan import Plan
from benchmarks.procs import child_pids, log, rss_kib, stack, wait_until
from benchmarks.services import (
    start_bare_api,
    start_bare_worker,
    start_courier_api,
    start_courier_worker,
    start_redis,
)
from benchmarks.stats import Figure
from worker.core.names import DEFAULT_QUEUE

SCENARIO = "6 memory"
SAMPLE_SECONDS = 5.0
SOAK_RATE = 100


def largest_child_mib(proc: subprocess.Popen[bytes]) -> float:
    sizes = [rss_kib(pid) for pid in child_pids(proc.pid)]
    if not sizes:
        raise RuntimeError(f"process {proc.pid} has no children")
    return max(sizes) / 1024


def wait_drained(client: redis.Redis, queue: str, timeout: float) -> None:
    wait_until(lambda: backlog(client, queue) == 0, timeout, f"drain of {queue!r}", 0.1)


def measure_bare(plan: Plan) -> tuple[float, float]:
    with stack("memory-bare") as s:
        r = start_redis(s)
        api = start_bare_api(s, r)
        worker = start_bare_worker(s, r)
        submit_many(api.url, plan.memory_tasks)
        wait_drained(r.client(), "celery", plan.drain_timeout)
        return largest_child_mib(api.proc), largest_child_mib(worker.proc)


def run(plan: Plan) -> list[Figure]:
    log(f"{SCENARIO}: bare stack, {plan.memory_tasks:,} tasks")
    bare_api, bare_pool = measure_bare(plan)
    with stack("memory") as s:
        r = start_redis(s)
        api = start_courier_api(s, r)
        worker = start_courier_worker(s, r)
        log(f"{SCENARIO}: Courier, {plan.memory_tasks:,} tasks")
        submit_many(api.url, plan.memory_tasks)
        wait_drained(r.client(), DEFAULT_QUEUE, plan.drain_timeout)
        api_rss = [largest_child_mib(api.proc)]
        pool_rss = [largest_child_mib(worker.proc)]
        log(f"  after warm-up: api {api_rss[0]:.1f} MiB, pool child {pool_rss[0]:.1f} MiB")
        log(f"{SCENARIO}: soak {plan.soak_seconds:.0f} s at ~{SOAK_RATE} tasks/s")
        end = time.monotonic() + plan.soak_seconds
        while time.monotonic() < end:
            submit_steady(api.url, SOAK_RATE, min(SAMPLE_SECONDS, end - time.monotonic()))
            api_rss.append(largest_child_mib(api.proc))
            pool_rss.append(largest_child_mib(worker.proc))
        log(f"  soak end: api {api_rss[-1]:.1f} MiB, pool child {pool_rss[-1]:.1f} MiB")
    series = {"api_mib": api_rss, "pool_child_mib": pool_rss, "every_seconds": SAMPLE_SECONDS}
    return [
        Figure(
            SCENARIO, f"API worker RSS after {plan.memory_tasks:,} tasks", "MiB",
            [api_rss[0]], "bare FastAPI worker", [bare_api],
        ),
        Figure(
            SCENARIO, f"pool child RSS after {plan.memory_tasks:,} tasks", "MiB",
            [pool_rss[0]], "bare Celery child", [bare_pool],
        ),
        Figure(
            SCENARIO, f"API worker RSS after {plan.soak_seconds:.0f} s soak", "MiB",
            [api_rss[-1]], "after warm-up", [api_rss[0]],
            target="< 1.10x", target_ratio_max=1.10, extra=series,
        ),
        Figure(
            SCENARIO, f"pool child RSS after {plan.soak_seconds:.0f} s soak", "MiB",
            [pool_rss[-1]], "after warm-up", [pool_rss[0]],
            target="< 1.10x", target_ratio_max=1.10,
        ),
    ]  # fmt: skip
