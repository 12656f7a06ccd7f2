"""Scenario 5: what metrics and tracing cost, on the submit path and on the drain.

"On" is metrics served (API ``/metrics``, the worker's metrics port) and tracing exported over
OTLP/HTTP to a local sink; "off" is ``COURIER_METRICS_ENABLED=false``, worker metrics port 0 and
``OTEL_TRACES_EXPORTER=none``. The worker's counters cannot be switched off (by design), so
"off" still counts: the ratio prices the server, the spans and their export.
"""

from __future__ import annotations

from benchmarks.execution import COURIER, measure_drain
from benchmarks.plan import Plan
from benchmarks.procs import log, stack
from benchmarks.services import start_courier_api, start_redis
from benchmarks.sink import otlp_sink
from benchmarks.stats import Figure
from benchmarks.submit import load_post

SCENARIO = "5 instrumentation"
OFF = {
    "COURIER_METRICS_ENABLED": "false",
    "COURIER_WORKER_METRICS_PORT": "0",
    "OTEL_TRACES_EXPORTER": "none",
}


def tracing_on(endpoint: str) -> dict[str, str]:
    return {
        "COURIER_METRICS_ENABLED": "true",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    }


def run(plan: Plan) -> list[Figure]:
    submit: dict[str, list[float]] = {"on": [], "off": []}
    drain: dict[str, list[float]] = {"on": [], "off": []}
    p99: dict[str, list[float]] = {"on": [], "off": []}
    with otlp_sink() as endpoint:
        for i in range(plan.runs):
            log(f"{SCENARIO}: run {i + 1}/{plan.runs}")
            for mode, env in (("on", tracing_on(endpoint)), ("off", OFF)):
                with stack(f"instr-{mode}") as s:
                    r = start_redis(s)
                    api = start_courier_api(s, r, env)
                    load = load_post(api.url, r, plan)
                submit[mode].append(load.requests_per_second)
                p99[mode].append(load.p99_ms)
                log(f"  submit, instrumentation {mode}: {load.requests_per_second:,.0f} req/s")
                label = f"drain, instrumentation {mode}"
                drain[mode].append(measure_drain(COURIER, plan, env, label).rate)
    return [
        Figure(
            SCENARIO, "submit throughput, metrics+tracing on", "req/s", submit["on"],
            "off", submit["off"], target=">= 0.9x off", target_ratio_min=0.9,
        ),
        Figure(
            SCENARIO, "submit p99, metrics+tracing on", "ms", p99["on"], "off", p99["off"],
        ),
        Figure(
            SCENARIO, "drain, metrics+tracing on", "tasks/s", drain["on"],
            "off", drain["off"], target=">= 0.9x off", target_ratio_min=0.9,
        ),
    ]  # fmt: skip
