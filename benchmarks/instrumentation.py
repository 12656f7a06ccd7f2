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


METRICS_ONLY = {**OFF, "COURIER_METRICS_ENABLED": "true"}


def sampled(endpoint: str, ratio: float) -> dict[str, str]:
    """Tracing as a busy production API would run it: a ratio of traces, decided at the edge."""
    return {
        **tracing_on(endpoint),
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": str(ratio),
    }


def submit_rate(env: dict[str, str], plan: Plan) -> tuple[float, float]:
    with stack("instr") as s:
        r = start_redis(s)
        api = start_courier_api(s, r, env)
        load = load_post(api.url, r, plan)
    return load.requests_per_second, load.p99_ms


def run(plan: Plan) -> list[Figure]:
    modes = ("on", "off", "metrics only", "tracing 10%", "tracing 2%")
    submit: dict[str, list[float]] = {mode: [] for mode in modes}
    p99: dict[str, list[float]] = {mode: [] for mode in modes}
    drain: dict[str, list[float]] = {"on": [], "off": [], "tracing 2%": []}
    with otlp_sink() as endpoint:
        envs = {
            "on": tracing_on(endpoint),
            "off": OFF,
            "metrics only": METRICS_ONLY,
            "tracing 10%": sampled(endpoint, 0.1),
            "tracing 2%": sampled(endpoint, 0.02),  # the Helm chart's default
        }
        for i in range(plan.runs):
            log(f"{SCENARIO}: run {i + 1}/{plan.runs}")
            for mode in modes:
                rate, tail = submit_rate(envs[mode], plan)
                submit[mode].append(rate)
                p99[mode].append(tail)
                log(f"  submit, instrumentation {mode}: {rate:,.0f} req/s")
                if mode in drain:
                    label = f"drain, instrumentation {mode}"
                    drain[mode].append(measure_drain(COURIER, plan, envs[mode], label).rate)
    return [
        Figure(
            SCENARIO, "submit throughput, metrics + tracing every request", "req/s",
            submit["on"], "off", submit["off"],
        ),
        Figure(
            SCENARIO, "submit p99, metrics + tracing every request", "ms", p99["on"],
            "off", p99["off"],
        ),
        Figure(
            SCENARIO, "submit throughput, metrics only", "req/s", submit["metrics only"],
            "off", submit["off"],
        ),
        Figure(
            SCENARIO, "submit throughput, metrics + tracing 10% sampled", "req/s",
            submit["tracing 10%"], "off", submit["off"],
        ),
        Figure(
            SCENARIO, "submit throughput, metrics + tracing 2% sampled (chart default)",
            "req/s", submit["tracing 2%"], "off", submit["off"], target=">= 0.9x off",
            target_ratio_min=0.9,
        ),
        Figure(
            SCENARIO, "drain, metrics + tracing every task", "tasks/s", drain["on"],
            "off", drain["off"],
        ),
        Figure(
            SCENARIO, "drain, metrics + tracing 2% sampled (chart default)", "tasks/s",
            drain["tracing 2%"], "off", drain["off"], target=">= 0.9x off",
            target_ratio_min=0.9,
        ),
    ]  # fmt: skip
