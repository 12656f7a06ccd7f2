"""Scenario ``worker-cpu``: CPU-milliseconds a worker spends per executed no-op, from ``/proc``.

On this shared 2-core machine a drain rate moves by ±25 % between identical runs; the CPU time
a worker's processes were given does not depend on how long they waited for a core. So the cost
of a task is counted, not timed: the worker's utime + stime (its main process and its live pool
children, ``/proc/<pid>/stat``) once its queue is drained, minus the same worker's count on an
empty queue (start-up, imports, connecting), over the number of tasks. Both counts are read one
second after the worker is idle (ready, or drained), so the idle second cancels out too.

Each worker runs as ``drain`` runs it (the chart's flags: ``--loglevel=INFO --without-gossip
--without-mingle``; Courier's queue filled through its API, so every task has a record), against
the seed's app (``task_track_started``, ``--loglevel=info``, prefork of 2) on its own Redis, in
the same run. The chart's worker is the inline supervisor with its two one-process workers (the
chart's default ``worker.pool: inline``; its count is the supervisor's and both children's);
``prefork`` is the chart's ``worker.pool: prefork``. The drain's CPU side: workers that drain
twice the seed's rate on two cores must spend at most half its CPU per task (Redis's share
aside).

``python -m benchmarks.worker_cpu [TASKS] [VARIANT ...]`` prints one line per run and variant
(``chart``, ``inline``, ``prefork``, ``seed``), ``RUNS`` runs (default 3).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis

from benchmarks.drain import (
    CHART,
    PREFORK,
    SEED,
    Celery,
    Courier,
    fill_celery,
    fill_courier,
    start_celery_worker,
    start_courier_workers,
)
from benchmarks.enqueue import backlog
from benchmarks.plan import Plan
from benchmarks.procs import Stack, child_pids, log, stack, wait_until
from benchmarks.services import Worker, start_redis
from benchmarks.stats import Figure
from worker.core.names import DEFAULT_QUEUE

SCENARIO = "2c worker CPU"
INLINE = Courier("courier, one inline worker (supervisor --concurrency=1)", processes=1)
# The seconds a worker stays idle before its count is read, drained or not.
SETTLE_SECONDS = 1.0
_TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def cpu_ms(pid: int) -> float:
    """utime + stime of ``pid``, of its live children (prefork's pool) and of those it reaped
    (cutime + cstime), in milliseconds."""
    total = 0
    for proc in (pid, *child_pids(pid)):
        try:
            stat = Path(f"/proc/{proc}/stat").read_text()
        except FileNotFoundError:  # a child gone since it was listed: reaped, its parent's
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (stat fields 14, 15)
        if proc == pid:
            total += int(fields[13]) + int(fields[14])  # cutime, cstime
    return total * _TICK_MS


def _drained_cpu_ms(s: Stack, worker: Worker, client: redis.Redis, queue: str, tasks: int) -> float:
    """The worker's count once it is ready and has drained ``queue`` (its start-up included)."""

    def ready() -> bool:
        if worker.proc.poll() is not None:
            raise RuntimeError(f"worker exited:\n{s.log_tail(worker.proc)}")
        # Celery logs " ready." at INFO once its consumer runs (the chart's level and the seed's).
        return " ready." in s.log_tail(worker.proc, sys.maxsize)

    wait_until(ready, 60, "the worker's start", interval=0.2)
    drained = 60 + tasks / 50
    wait_until(lambda: backlog(client, queue) == 0, drained, f"a drain of {tasks}", interval=0.05)
    time.sleep(SETTLE_SECONDS)
    return cpu_ms(worker.proc.pid)


def courier_cpu_ms(variant: Courier, tasks: int) -> float:
    """CPU-ms of ``variant``'s worker (one process group) after its start and ``tasks`` no-ops."""
    if variant.pool == "solo" and variant.processes > 1:
        raise ValueError("one worker: its process tree is what is counted")
    with stack("worker-cpu") as s:
        r = start_redis(s)
        if tasks:
            fill_courier(s, r, variant, tasks)
        (worker,) = start_courier_workers(s, r, variant)
        return _drained_cpu_ms(s, worker, r.client(), DEFAULT_QUEUE, tasks)


def celery_cpu_ms(variant: Celery, tasks: int) -> float:
    with stack("worker-cpu") as s:
        r = start_redis(s)
        if tasks:
            fill_celery(r, variant, tasks)
        worker = start_celery_worker(s, r, variant)
        return _drained_cpu_ms(s, worker, r.client(), "celery", tasks)


VARIANTS: dict[str, Callable[[int], float]] = {
    "chart": lambda n: courier_cpu_ms(CHART, n),
    "inline": lambda n: courier_cpu_ms(INLINE, n),
    "prefork": lambda n: courier_cpu_ms(PREFORK, n),
    "seed": lambda n: celery_cpu_ms(SEED, n),
}


def per_task_ms(variant: str, tasks: int) -> float:
    """CPU-ms per task: the drained count minus an empty queue's, over ``tasks``."""
    measure = VARIANTS[variant]
    return (measure(tasks) - measure(0)) / tasks


def measure_runs(names: list[str], tasks: int, runs: int) -> dict[str, list[float]]:
    """Variants interleaved within each run, so machine noise hits them alike."""
    per_task: dict[str, list[float]] = {name: [] for name in names}
    for i in range(runs):
        log(f"{SCENARIO}: run {i + 1}/{runs} ({tasks:,} tasks per worker)")
        for name in names:
            per_task[name].append(per_task_ms(name, tasks))
            log(f"  {name}: {per_task[name][-1]:.3f} CPU-ms per task")
    return per_task


def run(plan: Plan) -> list[Figure]:
    tasks = min(plan.tasks, 3_000)  # enough for a 10 ms clock tick to be ~1 % of the count
    ms = measure_runs(list(VARIANTS), tasks, plan.runs)
    return [
        Figure(
            SCENARIO, "CPU per task, Courier chart flags (inline supervisor of 2)", "CPU-ms",
            ms["chart"], SEED.label, ms["seed"],
            notes="supervisor and both workers; 2x the seed's drain on 2 cores needs <= ~0.5x",
        ),
        Figure(
            SCENARIO, f"CPU per task, {PREFORK.label}", "CPU-ms", ms["prefork"], SEED.label,
            ms["seed"], notes="main process and pool children; lower is better",
        ),
        Figure(
            SCENARIO, f"CPU per task, {INLINE.label}", "CPU-ms", ms["inline"], SEED.label,
            ms["seed"], notes="2x the seed's drain on 2 cores needs <= ~0.5x (Redis aside)",
        ),
        Figure(
            SCENARIO, f"CPU per task, {PREFORK.label}", "CPU-ms", ms["prefork"], CHART.label,
            ms["chart"],
        ),
    ]  # fmt: skip


def main(argv: list[str]) -> None:
    tasks = int(argv[0]) if argv else 3_000
    names = argv[1:] or list(VARIANTS)
    runs = int(os.environ.get("RUNS", "3"))
    for name, values in measure_runs(names, tasks, runs).items():
        print(f"{name}: " + " ".join(f"{v:.3f}" for v in values) + " CPU-ms per task")


if __name__ == "__main__":
    main(sys.argv[1:])
