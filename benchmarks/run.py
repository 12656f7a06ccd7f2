"""``python -m benchmarks.run [--quick] [--only SCENARIO ...]``: the benchmark suite.

Starts everything it needs on loopback, runs each scenario several times, prints a table of
medians (min-max) with every figure as a ratio to a baseline measured in the same run, and
writes ``benchmarks/results/latest.json`` (and ``latest.md``, the table of docs/performance/).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from benchmarks import (
    drain,
    execution,
    footprint,
    instrumentation,
    instrumentation_cpu,
    latency,
    memory,
    peers,
    redis_work,
    sentinel_submit,
    submit,
    worker_cpu,
)
from benchmarks.load import require_wrk
from benchmarks.plan import FULL, QUICK, Plan
from benchmarks.procs import log
from benchmarks.report import RESULTS, markdown, table, write_json
from benchmarks.stats import Figure

SCENARIOS: dict[str, Callable[[Plan], list[Figure]]] = {
    "submit": submit.run,
    "submit-sentinel": sentinel_submit.run,
    "execution": execution.run,
    "drain": drain.run,
    "worker-cpu": worker_cpu.run,
    "peers": peers.run,
    "redis-work": redis_work.run,
    "latency": latency.run,
    "instrumentation": instrumentation.run,
    "instrumentation-cpu": instrumentation_cpu.run,
    "memory": memory.run,
    "footprint": footprint.run,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer, smaller runs (minutes)")
    parser.add_argument(
        "--only", action="append", choices=sorted(SCENARIOS), help="run only this (repeatable)"
    )
    parser.add_argument("--runs", type=int, help="runs per scenario (at least 1)")
    parser.add_argument("--tasks", type=int, help="tasks per drain (default 10,000; quick 3,000)")
    parser.add_argument("--output", type=Path, help="JSON path (default results/latest.json)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    plan = QUICK if args.quick else FULL
    if args.runs:
        plan = replace(plan, runs=max(1, args.runs))
    if args.tasks:
        plan = replace(plan, tasks=max(100, args.tasks))
    names = args.only or list(SCENARIOS)
    if {"submit", "submit-sentinel", "instrumentation"} & set(names):
        require_wrk()
    started = time.monotonic()
    figures: list[Figure] = []
    try:
        for name in names:
            log(f"=== {name} ===")
            figures += SCENARIOS[name](plan)
    except KeyboardInterrupt:
        log("interrupted: every process started has been stopped")
    if not figures:
        log("no scenario completed: nothing to report")
        return 1
    default = "latest" if args.only is None else "only-" + "-".join(names)
    output = args.output or RESULTS / f"{default}.json"
    meta = {"quick": args.quick, "scenarios": names, "plan": asdict(plan)}
    meta["seconds"] = round(time.monotonic() - started)
    path = write_json(figures, meta, output)
    path.with_suffix(".md").write_text(markdown(figures) + "\n")
    print(table(figures))
    log(f"wrote {path} in {meta['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
