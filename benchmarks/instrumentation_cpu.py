"""Scenario 5b: instructions per submit and per executed task, by instrumentation mode (callgrind).

Throughput on this shared 2-core machine moves by ±25 % between identical runs, which hides
a few per cent. callgrind counts instructions, not seconds: the same code path gives the same
count whatever else the machine does, so the modes can be told apart at the per-cent level.
Each mode runs ``benchmarks.submit_cpu`` under callgrind twice, with 0 and with N submits; the
difference over N is the instructions of one submit (server, handler, instrumentation, span
export), start-up and warm-up cancelled out. The OTLP sink runs in this process, uncounted.
The execution side is counted the same way: a worker (``--pool=solo``, or Courier's inline pool:
one process, so one count) started on 0 and on N queued no-ops, both stopped with SIGTERM once
the second has drained its queue. Stopping them together cancels what a worker does by the clock
(the revoke listener's and the heartbeat's wake-ups, kombu's timers): an empty worker stopped as
soon as it was ready left the full one's wall time in its count, which then grew with the load of
the machine (0.4-0.7 M instructions per second of drain were seen).
The messages carry the trace context the API would have sent with the same sampler
(a new trace id each, "sampled" as its ratio decides), so the worker does what it does in
production: follow the API's verdict. A solo worker also runs the broker's consumer, whose
Redis housekeeping passes through the Redis instrumentation (which starts no span for it);
a prefork worker's main process is not instrumented, so the count errs on the high side.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis
from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased

from benchmarks.enqueue import backlog, capture_template, enqueue_raw
from benchmarks.execution import COURIER, producer_app
from benchmarks.instrumentation import METRICS_ONLY, OFF, sampled, tracing_on
from benchmarks.plan import Plan
from benchmarks.procs import ROOT, VENV_BIN, free_port, log, stack, wait_until
from benchmarks.services import WORKER_FAST_FLAGS, Redis, start_redis
from benchmarks.sink import otlp_sink
from benchmarks.stats import Figure

SCENARIO = "5b instructions"
_COLLECTED = re.compile(r"Collected : (\d+)")


def require_valgrind() -> str:
    found = shutil.which("valgrind")
    if found is None:
        raise RuntimeError("valgrind is needed: apt-get install valgrind")
    return found


def _callgrind(tmp: str) -> list[str]:
    return [require_valgrind(), "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.%p"]


def _collected(output: str, pid: int | None = None) -> int:
    """callgrind's total, of process ``pid`` when the output holds several (prefork's
    children are forks, each counted and reported on its own)."""
    pattern = _COLLECTED if pid is None else re.compile(rf"=={pid}== Collected : (\d+)")
    match = pattern.search(output)
    if match is None:
        raise RuntimeError(f"no callgrind total in:\n{output[-2000:]}")
    return int(match.group(1))


# callgrind runs a process ~40x slower, so the SDK's 5 s export timer would fire ~40x as often
# per request as at native speed: each export's fixed cost (an HTTP POST) spread over a few
# spans, where production batches fill. Scaled by the slowdown, exports come as often per
# request as they would natively; what is still buffered at the end is flushed (and counted).
_BSP_DELAY_UNDER_CALLGRIND = {"OTEL_BSP_SCHEDULE_DELAY": str(5000 * 40)}
# The same slowdown turns Courier's sub-second Redis timeouts (a fast 503 in production) into
# failed connects and 503s: under callgrind they are stretched to the settings' maximum.
_REDIS_TIMEOUTS_UNDER_CALLGRIND = {
    "COURIER_REDIS_SOCKET_TIMEOUT": "60",
    "COURIER_REDIS_CONNECT_TIMEOUT": "60",
}


def _env(redis_url: str, extra: dict[str, str]) -> dict[str, str]:
    return {
        **os.environ, "PYTHONPATH": str(ROOT), "COURIER_REDIS_URL": redis_url,
        **_BSP_DELAY_UNDER_CALLGRIND, **_REDIS_TIMEOUTS_UNDER_CALLGRIND, **extra,
    }  # fmt: skip


def _submits(env: dict[str, str], count: int, tmp: str, target: str = "submit") -> int:
    args = [
        *_callgrind(tmp), str(VENV_BIN / "python"), "-m", "benchmarks.submit_cpu", str(count),
        target,
    ]  # fmt: skip
    out = subprocess.run(
        args, env=env, cwd=ROOT, capture_output=True, text=True, check=True, timeout=1800
    )
    return _collected(out.stderr)


def api_decided(ratio: float) -> Callable[[], str]:
    """The W3C context the API puts in a message when its sampler runs at ``ratio``: a new
    trace id each, "sampled" as the SDK's ratio sampler decides on it."""
    sampler = TraceIdRatioBased(ratio)

    def traceparent() -> str:
        trace_id, span_id = random.getrandbits(128), random.getrandbits(64)
        kept = sampler.should_sample(None, trace_id, "POST").decision is Decision.RECORD_AND_SAMPLE
        return f"00-{trace_id:032x}-{span_id:016x}-{'01' if kept else '00'}"

    return traceparent


# How each pool is selected; for prefork, only the main process is counted (the consumer: fetch,
# screen, Celery's strategy, the hand-over to the children), its children apart.
POOL_FLAGS = {
    "solo": ["--pool=solo"],
    "inline": [],  # COURIER_WORKER_POOL=inline in the environment: Celery's --pool takes names
    "prefork": ["--pool=prefork", "--concurrency=2"],
}


def _executions(
    env: dict[str, str],
    count: int,
    tmp: str,
    template: dict[str, Any],
    queue: str,
    traceparent: Callable[[], str] | None,
    pool: str,
    drained: threading.Event,
) -> int:
    """One worker's count; the empty one (``count`` 0) runs until the full one has drained."""
    if env.get("COURIER_WORKER_METRICS_PORT") != "0":  # two workers at once: not both on 9808
        env = {**env, "COURIER_WORKER_METRICS_PORT": str(free_port())}
    client = redis.Redis.from_url(env["COURIER_REDIS_URL"])
    client.flushdb()
    enqueue_raw(template, client, queue, count, traceparent=traceparent)
    log_path = Path(tmp) / f"worker-{count}.log"
    args = [
        *_callgrind(tmp), str(VENV_BIN / "python"), "-m", "celery", "-A", "worker.celery_app",
        "worker", *POOL_FLAGS[pool], *WORKER_FAST_FLAGS, "--loglevel=INFO", "-n", f"cpu{count}@%h",
    ]  # fmt: skip
    with log_path.open("wb") as out:
        proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:

            def ready() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"worker exited:\n{log_path.read_text()[-2000:]}")
                return " ready." in log_path.read_text()

            wait_until(ready, 600, "the worker under callgrind", interval=0.5)
            wait_until(lambda: backlog(client, queue) == 0, 1800, "the drain", interval=0.5)
            if count:
                drained.set()
            elif not drained.wait(3600):
                raise RuntimeError("the full worker did not drain")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(600)
            client.close()
    return _collected(log_path.read_text(), proc.pid if pool == "prefork" else None)


def per_submit(
    r: Redis, extra: dict[str, str], count: int, tmp: str, target: str = "submit"
) -> float:
    """Instructions per request of ``target`` (see ``benchmarks.submit_cpu``)."""
    env = _env(r.url, {"COURIER_LOG_LEVEL": "WARNING", **extra})
    with ThreadPoolExecutor(2) as pool:  # the two runs of a mode share the two cores
        empty, full = pool.map(lambda n: _submits(env, n, tmp, target), (0, count))
    return (full - empty) / count


def per_task(
    r: Redis,
    extra: dict[str, str],
    count: int,
    tmp: str,
    template: dict[str, Any],
    queue: str,
    traceparent: Callable[[], str] | None = None,
    pool: str = "solo",
) -> float:
    """Both runs at once, each on its own Redis database; ``pool`` "solo" or "inline"."""
    envs = [_env(r.url.rsplit("/", 1)[0] + f"/{db}", extra) for db in (1, 2)]
    if pool == "inline":
        envs = [{**env, "COURIER_WORKER_POOL": "inline"} for env in envs]
    drained = threading.Event()

    def execute(env: dict[str, str], n: int) -> int:
        try:
            return _executions(env, n, tmp, template, queue, traceparent, pool, drained)
        finally:
            drained.set()  # a failed full run must not leave the empty one waiting

    with ThreadPoolExecutor(2) as workers:
        empty, full = workers.map(execute, envs, (0, count))
    return (full - empty) / count


# Share of traces the API keeps, by tracing mode: the sampler both processes run, and the
# context the messages of the per-task runs carry.
RATIOS = {"tracing, all dropped": 0.0, "2%": 0.02, "5%": 0.05, "10%": 0.1, "every request": 1.0}


def _tracing_env(endpoint: str, ratio: float) -> dict[str, str]:
    if ratio == 0.0:
        return {**tracing_on(endpoint), "OTEL_TRACES_SAMPLER": "always_off"}
    return tracing_on(endpoint) if ratio == 1.0 else sampled(endpoint, ratio)


def run(plan: Plan) -> list[Figure]:
    count = max(300, plan.round_trips)
    modes = ("off", "metrics only", *RATIOS)
    task_modes = ("off", "metrics only", "tracing, all dropped", "2%", "every request")
    submits: dict[str, list[float]] = {mode: [] for mode in modes}
    tasks: dict[str, list[float]] = {mode: [] for mode in task_modes}
    with otlp_sink() as endpoint, stack("cpu") as s:
        r = start_redis(s)
        envs = {
            "off": OFF,
            "metrics only": METRICS_ONLY,
            **{mode: _tracing_env(endpoint, ratio) for mode, ratio in RATIOS.items()},
        }
        for mode in modes:
            submits[mode].append(per_submit(r, envs[mode], count, str(s.tmp)))
            log(f"  submit, {mode}: {submits[mode][-1]:,.0f} instructions ({count} submits)")
        # The wrk scenario's configuration (metrics on, tracing off), against its baselines.
        baselines = {
            target: [per_submit(r, METRICS_ONLY, count, str(s.tmp), target)]
            for target in ("healthz", "bare")
        }
        log(f"  GET /healthz: {baselines['healthz'][0]:,.0f}, bare: {baselines['bare'][0]:,.0f}")
        producer, queue = producer_app(COURIER, r)
        template = capture_template(producer, r.client(), queue)
        for mode in task_modes:
            # Messages carry what the API, running the same sampler, would have put in them.
            context = api_decided(RATIOS[mode]) if mode in RATIOS else None
            tasks[mode].append(per_task(r, envs[mode], count, str(s.tmp), template, queue, context))
            log(f"  task, {mode}: {tasks[mode][-1]:,.0f} instructions ({count} tasks)")
    return [
        Figure(
            SCENARIO, "per submit, metrics only, vs GET /healthz", "instructions",
            submits["metrics only"], "GET /healthz", baselines["healthz"],
        ),
        Figure(
            SCENARIO, "per submit, metrics only, vs bare FastAPI", "instructions",
            submits["metrics only"], "bare FastAPI+send_task", baselines["bare"],
        ),
        *_figures("submit", submits),
        *_figures("executed task", tasks),
    ]  # fmt: skip


def _figures(what: str, counts: dict[str, list[float]]) -> list[Figure]:
    figures = []
    for mode, values in counts.items():
        if mode == "off":
            continue
        default = mode == "2%"  # the Helm chart's sampling: the configuration the target is for
        figures.append(
            Figure(
                SCENARIO, f"per {what}, {mode}", "instructions", values, "off", counts["off"],
                target="<= 1.1x off" if default else "",
                target_ratio_max=1.1 if default else None,
            )
        )  # fmt: skip
    return figures


def main(argv: list[str]) -> None:
    """``python -m benchmarks.instrumentation_cpu [solo|inline|prefork] [TASKS] [RUNS]``:
    instructions per executed no-op with metrics on and tracing off (the configuration the
    worker's CPU cuts in docs/performance/worker.md were counted in), one line per run; for
    prefork, its main process only."""
    pool = argv[0] if argv else "solo"
    count = int(argv[1]) if len(argv) > 1 else 1500
    runs = int(argv[2]) if len(argv) > 2 else 2
    with stack("cpu") as s:
        r = start_redis(s)
        producer, queue = producer_app(COURIER, r)
        template = capture_template(producer, r.client(), queue)
        for _ in range(runs):
            per = per_task(r, METRICS_ONLY, count, str(s.tmp), template, queue, pool=pool)
            print(f"{pool}: {per:,.0f} instructions per executed task ({count} tasks)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
