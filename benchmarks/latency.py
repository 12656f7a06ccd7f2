"""Scenario 4: end-to-end latency at idle, one task at a time.

Submit over HTTP, then poll ``GET /v1/tasks/{id}`` without pause: the first answer that is not
``queued`` bounds submit -> started as the client sees it, ``succeeded`` gives submit -> result,
and the record's own stamps give ``started_at - enqueued_at`` without polling error. The
baseline is Celery's bare round trip, ``apply_async().get()`` against a default worker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

import httpx

from benchmarks.bare_celery import make_app
from benchmarks.plan import Plan
from benchmarks.procs import log, stack
from benchmarks.services import (
    start_bare_worker,
    start_courier_api,
    start_courier_worker,
    start_redis,
)
from benchmarks.stats import Figure, percentile

SCENARIO = "4 latency"
WARM_UP = 20


@dataclass
class Trips:
    started_server_ms: list[float] = field(default_factory=list)
    started_client_ms: list[float] = field(default_factory=list)
    result_ms: list[float] = field(default_factory=list)
    missing_stamps: int = 0


def courier_trip(client: httpx.Client, trips: Trips) -> None:
    t0 = time.perf_counter()
    task_id = client.post("/v1/tasks/noop", json={"echo": 1, "sleep_seconds": 0}).json()["id"]
    started: float | None = None
    deadline = t0 + 10
    while time.perf_counter() < deadline:
        body = client.get(f"/v1/tasks/{task_id}").json()
        if started is None and body["status"] != "queued":
            started = time.perf_counter()
        if body["status"] == "succeeded":
            done = time.perf_counter()
            break
    else:
        raise TimeoutError(f"task {task_id} did not succeed within 10 s")
    assert started is not None
    if body.get("enqueued_at") and body.get("started_at"):
        stamps = [datetime.fromisoformat(body[k]) for k in ("enqueued_at", "started_at")]
        trips.started_server_ms.append((stamps[1] - stamps[0]).total_seconds() * 1e3)
    else:
        # A finished task whose record lacks a stamp: counted, reported, not a crash.
        trips.missing_stamps += 1
    trips.started_client_ms.append((started - t0) * 1e3)
    trips.result_ms.append((done - t0) * 1e3)


def measure_courier(plan: Plan) -> Trips:
    trips = Trips()
    with stack("latency") as s:
        r = start_redis(s)
        api = start_courier_api(s, r)
        start_courier_worker(s, r)
        with httpx.Client(base_url=api.url, timeout=10) as client:
            for _ in range(WARM_UP):
                courier_trip(client, Trips())
            for _ in range(plan.round_trips):
                courier_trip(client, trips)
    return trips


def measure_bare(plan: Plan) -> list[float]:
    with stack("latency-bare") as s:
        r = start_redis(s)
        start_bare_worker(s, r)
        app = make_app(r.url)
        for _ in range(WARM_UP):
            app.send_task("noop", kwargs={"echo": 1}).get(timeout=30)
        samples = []
        for _ in range(plan.round_trips):
            t0 = time.perf_counter()
            app.send_task("noop", kwargs={"echo": 1}).get(timeout=10)
            samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def run(plan: Plan) -> list[Figure]:
    rows: dict[str, list[float]] = {}
    bare50: list[float] = []
    bare99: list[float] = []
    for i in range(plan.runs):
        log(f"{SCENARIO}: run {i + 1}/{plan.runs} ({plan.round_trips} round trips each)")
        trips = measure_courier(plan)
        if trips.missing_stamps:
            log(f"  warning: {trips.missing_stamps} succeeded tasks had no started_at stamp")
        bare = measure_bare(plan)
        bare50.append(percentile(bare, 50))
        bare99.append(percentile(bare, 99))
        for name, samples in (
            ("submit -> started (stamps)", trips.started_server_ms),
            ("submit -> started (client)", trips.started_client_ms),
            ("submit -> result (client)", trips.result_ms),
        ):
            for q in (50, 99):
                rows.setdefault(f"{name} p{q}", []).append(percentile(samples, q))
        log(
            f"  started p50 {rows['submit -> started (stamps) p50'][-1]:.2f} ms, "
            f"result p50 {rows['submit -> result (client) p50'][-1]:.2f} ms, "
            f"bare get() p50 {bare50[-1]:.2f} ms"
        )
    figures = []
    for measure, values in rows.items():
        p99 = measure.endswith("p99")
        figures.append(
            Figure(
                SCENARIO, measure, "ms", values,
                f"bare apply_async().get() p{99 if p99 else 50}", bare99 if p99 else bare50,
                target="p50 <= 2 ms" if measure == "submit -> started (stamps) p50" else "",
                target_value_max=2.0 if measure == "submit -> started (stamps) p50" else None,
            )
        )  # fmt: skip
    return figures
