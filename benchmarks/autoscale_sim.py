"""``make autoscale-sim``: the HPA's scaling signal, proved on real parts (no cluster here).

A burst of short tasks goes into a real Redis; real Courier workers run it; a controller loop
applies the Kubernetes HPA algorithm (``benchmarks/hpa.py``) to the metric the chart's HPA uses,
``max by (queue_name)(courier_queue_backlog)`` read from every worker's /metrics, and starts or
SIGTERMs worker processes as the HPA would scale the Deployment. The HPA is the chart's (target
10 per replica, its ``behavior``); every period is shortened by ``TIME_SCALE`` to fit a run in
minutes: sync 15 s -> 1.5 s, scale-up +100 %/+4 pods per 1.5 s, scale-down stabilisation
300 s -> 30 s, then -50 % per 6 s.

After the burst a steady trickle keeps tasks running while the HPA scales down, and every task
id's ``echo`` is counted in the results: tasks lost to a scale-down must be 0.
This is a simulation of the HPA, not a replacement for it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import redis
from celery import Celery

from benchmarks.enqueue import backlog, capture_template, enqueue_raw
from benchmarks.fleet import Fleet
from benchmarks.hpa import Autoscaler, chart_spec
from benchmarks.procs import log, stack
from benchmarks.report import RESULTS, machine_info
from benchmarks.services import start_redis
from worker.core.names import DEFAULT_QUEUE

TIME_SCALE = 0.1
SYNC_SECONDS = 15 * TIME_SCALE
TARGET_BACKLOG = 10  # the chart's targetBacklogPerReplica
MIN_REPLICAS, MAX_REPLICAS = 1, 8
TASK_SECONDS = 0.05
TRICKLE_PER_SECOND = 30
QUEUE = DEFAULT_QUEUE


@dataclass
class Sample:
    t: float
    metric: float | None
    backlog: int
    replicas: int
    ready: int


@dataclass
class Run:
    mode: str
    drain_seconds: float = 0.0
    submitted: int = 0
    executed_distinct: int = 0
    samples: list[Sample] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.submitted - self.executed_distinct


def distinct_echoes(client: redis.Redis) -> set[int]:
    """Every ``echo`` that a stored result holds (noop returns it): the tasks that ran."""
    seen: set[int] = set()
    keys = list(client.scan_iter("celery-task-meta-*", count=1000))
    for start in range(0, len(keys), 1000):
        for raw in client.mget(keys[start : start + 1000]):
            if raw:
                meta = json.loads(raw)
                if meta.get("status") == "SUCCESS" and isinstance(meta.get("result"), int):
                    seen.add(meta["result"])
    return seen


def courier_producer(redis_url: str) -> Celery:
    from worker.celery_config import create_celery_app
    from worker.core.settings import Settings

    return create_celery_app(Settings(redis_url=redis_url))


def simulate(mode: str, burst: int, trickle_seconds: float, timeout: float) -> Run:
    """``mode``: "hpa" (1..8 by the HPA), "fixed-1" or "fixed-8"."""
    run = Run(mode)
    env = {"COURIER_QUEUE_METRICS_LEASE_SECONDS": str(2 * SYNC_SECONDS)}
    with stack(f"autoscale-{mode}") as s:
        r = start_redis(s)
        client = r.client()
        # Before any worker consumes the queue (the template is taken back from it).
        template = capture_template(courier_producer(r.url), client, QUEUE)
        fleet = Fleet(s, r, env)
        fleet.scale(MAX_REPLICAS if mode == "fixed-8" else MIN_REPLICAS)
        deadline = time.monotonic() + 90
        while fleet.ready() < len(fleet.live) and time.monotonic() < deadline:
            time.sleep(0.2)
        hpa = Autoscaler(chart_spec(TARGET_BACKLOG, MIN_REPLICAS, MAX_REPLICAS, TIME_SCALE))
        enqueue_raw(template, client, QUEUE, burst, TASK_SECONDS)
        run.submitted = burst
        t0 = time.monotonic()
        next_sync = t0
        trickle_until: float | None = None
        while time.monotonic() - t0 < timeout:
            now = time.monotonic()
            left = backlog(client, QUEUE)
            if not run.drain_seconds and left == 0:
                run.drain_seconds = now - t0
                log(f"  {mode}: burst drained in {run.drain_seconds:.1f} s")
                if mode != "hpa":
                    break
                trickle_until = now + trickle_seconds
            if trickle_until and now < trickle_until:
                n = TRICKLE_PER_SECOND // 10
                enqueue_raw(template, client, QUEUE, n, TASK_SECONDS, first_echo=run.submitted)
                run.submitted += n
            if now >= next_sync:
                next_sync += SYNC_SECONDS
                metric = fleet.backlog_metric()
                if mode == "hpa":
                    fleet.scale(hpa.desired(now - t0, len(fleet.live), metric))
                run.samples.append(Sample(now - t0, metric, left, len(fleet.live), fleet.ready()))
            if trickle_until and now >= trickle_until and len(fleet.live) == MIN_REPLICAS:
                break
            time.sleep(0.1)
        fleet.wait_stopped()
        wait_deadline = time.monotonic() + 60
        while backlog(client, QUEUE) and time.monotonic() < wait_deadline:
            time.sleep(0.2)
        run.executed_distinct = len(distinct_echoes(client))
    log(f"  {mode}: {run.submitted} submitted, {run.executed_distinct} ran, lost {run.lost}")
    return run


def replica_table(run: Run, every: float = 3.0) -> str:
    lines = [
        "  t (s) | backlog metric | replicas | ready",
        "--------+----------------+----------+------",
    ]
    shown = -every
    for sample in run.samples:
        if sample.t - shown >= every:
            metric = "-" if sample.metric is None else f"{sample.metric:.0f}"
            lines.append(
                f"{sample.t:7.1f} | {metric:>14} | {sample.replicas:>8} | {sample.ready:>5}"
            )
            shown = sample.t
    return "\n".join(lines)


def plot(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for run in runs:
        ts = [s.t for s in run.samples]
        bottom.plot(
            ts, [s.backlog for s in run.samples], label=f"{run.mode} ({run.drain_seconds:.0f} s)"
        )
        if run.mode == "hpa":
            top.step(ts, [s.replicas for s in run.samples], where="post", label="replicas (HPA)")
            top.step(ts, [s.ready for s in run.samples], where="post", label="ready", ls="--")
    top.set_ylabel("worker replicas")
    top.set_ylim(0, MAX_REPLICAS + 1)
    top.legend(loc="upper right")
    top.set_title(
        f"HPA simulation: target backlog {TARGET_BACKLOG}/replica, periods x{TIME_SCALE} "
        "(sync 1.5 s, scale-down after 30 s)"
    )
    bottom.set_ylabel("backlog (waiting + reserved)")
    bottom.set_xlabel("seconds since the burst was queued")
    bottom.legend(loc="upper right", title="burst drained in")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.autoscale_sim", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller burst (about 2 minutes)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    burst = 1_500 if args.quick else 5_000
    # Outlasts the scale-down (30 s stabilisation, then 8 -> 4 -> 2 -> 1 every 6 s), so
    # replicas are SIGTERMed while tasks run.
    trickle = 60.0
    runs = []
    for mode in ("hpa", "fixed-1", "fixed-8"):
        log(f"autoscale-sim: {mode}, burst of {burst:,} x {TASK_SECONDS * 1000:.0f} ms tasks")
        runs.append(simulate(mode, burst, trickle, timeout=600))
    hpa = runs[0]
    print(replica_table(hpa))
    print()
    for run in runs:
        ratio = run.drain_seconds / hpa.drain_seconds
        drained = f"burst drained in {run.drain_seconds:6.1f} s ({ratio:.2f}x HPA)"
        print(f"{run.mode:8} {drained}, {run.submitted} submitted, lost {run.lost}")
    plot(runs, RESULTS / "autoscale.png")
    data = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        "burst": burst,
        "time_scale": TIME_SCALE,
        "runs": [asdict(r) | {"lost": r.lost} for r in runs],
    }
    (RESULTS / "autoscale.json").write_text(json.dumps(data, indent=2) + "\n")
    log(f"wrote {RESULTS / 'autoscale.png'}")
    return 0 if all(r.lost == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
