"""Scenario 1: submit throughput over HTTP, Courier's POST /v1/tasks/noop vs a bare endpoint.

Both run under gunicorn with 2 uvicorn workers against the same Redis, loaded by wrk with 32
connections; no worker runs, so only the submit path is priced. Redis is flushed before each
load so every run starts from the same empty queue.
"""

from __future__ import annotations

from benchmarks.load import Load, run_wrk
from benchmarks.plan import Plan
from benchmarks.procs import log, stack
from benchmarks.services import Redis, start_bare_api, start_courier_api, start_redis
from benchmarks.stats import Figure

SCENARIO = "1 submit"


def load_post(api_url: str, r: Redis, plan: Plan) -> Load:
    r.client().flushall()
    result = run_wrk(f"{api_url}/v1/tasks/noop", plan.load_seconds, post=True)
    if result.errors:
        log(f"  warning: {result.errors} non-2xx/timeouts")
    return result


def run(plan: Plan) -> list[Figure]:
    courier: list[Load] = []
    bare: list[Load] = []
    health: list[Load] = []
    with stack("submit") as s:
        r = start_redis(s)
        api = start_courier_api(s, r)
        bare_api = start_bare_api(s, r)
        for i in range(plan.runs):
            log(f"{SCENARIO}: run {i + 1}/{plan.runs}")
            courier.append(load_post(api.url, r, plan))
            bare.append(load_post(bare_api.url, r, plan))
            health.append(run_wrk(f"{api.url}/healthz", plan.load_seconds))
            log(
                f"  courier {courier[-1].requests_per_second:.0f} req/s, "
                f"bare {bare[-1].requests_per_second:.0f}, "
                f"healthz {health[-1].requests_per_second:.0f}"
            )
    return [
        Figure(
            SCENARIO, "POST /v1/tasks/noop throughput", "req/s",
            [x.requests_per_second for x in courier],
            "bare FastAPI+send_task", [x.requests_per_second for x in bare],
            target=">= 0.8x bare", target_ratio_min=0.8,
        ),
        Figure(
            SCENARIO, "POST p50 latency (32 in flight)", "ms",
            [x.p50_ms for x in courier], "bare", [x.p50_ms for x in bare],
        ),
        Figure(
            SCENARIO, "POST p99 latency (32 in flight)", "ms",
            [x.p99_ms for x in courier], "bare", [x.p99_ms for x in bare],
        ),
        Figure(
            SCENARIO, "POST throughput vs GET /healthz ceiling", "req/s",
            [x.requests_per_second for x in courier],
            "Courier GET /healthz", [x.requests_per_second for x in health],
        ),
    ]  # fmt: skip
