"""Scenario 3: the same no-op jobs through dramatiq, arq and rq, as a ratio to Courier.

Each peer lives in its own virtualenv under ``benchmarks/.venvs/`` (created on first use):
kombu 5.7 needs redis-py >= 6.4 while arq wants redis-py < 6, so they cannot share the project's.
Concurrency is 2 where the framework allows it: dramatiq 2 processes x 1 thread (and its
default 8 threads, for reference), rq two forking workers; arq runs one process with its defaults
(``max_jobs=2`` starves it to ~4 jobs/s: it reads that many per 0.5 s poll). rq and arq drain a few
hundred jobs/s, so a drain is timed over at most ``plan.peer_cap_seconds``: the rate is what
they finished in that window. Courier's rate is the execution scenario's, when it ran in the same
suite run (else it is measured here, interleaved).
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from benchmarks.execution import COURIER, COURIER_RATES, measure_drain
from benchmarks.plan import Plan
from benchmarks.procs import ROOT, Stack, log, stack
from benchmarks.services import start_redis
from benchmarks.stats import Figure

SCENARIO = "3 peers"
VENVS = Path(__file__).resolve().parent / ".venvs"
DONE_KEY = "bench:done"


@dataclass(frozen=True)
class Peer:
    label: str
    venv: str
    requirement: str
    module: str
    workers: tuple[tuple[str, ...], ...]


PEERS = [
    Peer(
        "dramatiq 2 proc x 1 thread", "dramatiq", "dramatiq[redis]", "dramatiq_jobs",
        (("dramatiq", "benchmarks.peer_jobs.dramatiq_jobs", "--processes", "2", "--threads", "1"),),
    ),
    Peer(
        "dramatiq 2 proc x 8 threads (its default)", "dramatiq", "dramatiq[redis]",
        "dramatiq_jobs",
        (("dramatiq", "benchmarks.peer_jobs.dramatiq_jobs", "--processes", "2", "--threads", "8"),),
    ),
    Peer(
        "rq, 2 forking workers", "rq", "rq", "rq_jobs",
        (("rq", "worker", "-q", "-u", "{url}", "default"),) * 2,
    ),
    Peer(
        "arq, 1 process, defaults (max_jobs=10)", "arq", "arq", "arq_jobs",
        (("arq", "benchmarks.peer_jobs.arq_jobs.WorkerSettings"),),
    ),
]  # fmt: skip


def ensure_venv(name: str, requirement: str) -> Path:
    """``benchmarks/.venvs/<name>`` with ``requirement`` installed; reused once it exists."""
    venv = VENVS / name
    stamp = venv / ".bench-installed"
    if not stamp.exists():
        log(f"creating {venv.relative_to(ROOT)} ({requirement})")
        _quiet(["python3", "-m", "venv", str(venv)])
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        _quiet([*pip, "--upgrade", "pip"])
        _quiet([*pip, requirement])
        stamp.touch()
    return venv / "bin"


def _quiet(args: list[str]) -> None:
    done = subprocess.run(args, capture_output=True, text=True, check=False, timeout=600)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stdout}{done.stderr}")


def peer_version(bin_dir: Path, dist: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({dist!r}))"
    out = subprocess.run([str(bin_dir / "python"), "-c", code], capture_output=True, text=True)
    return out.stdout.strip()


def measure_peer(peer: Peer, plan: Plan) -> float:
    bin_dir = ensure_venv(peer.venv, peer.requirement)
    with stack(peer.venv) as s:
        r = start_redis(s)
        env = {"BENCH_REDIS_URL": r.url, "PYTHONPATH": str(ROOT)}
        module = f"benchmarks.peer_jobs.{peer.module}"
        subprocess.run(
            [str(bin_dir / "python"), "-m", module, "enqueue", str(plan.tasks)],
            cwd=ROOT, env={**os.environ, **env}, check=True, timeout=300,
        )  # fmt: skip
        for args in peer.workers:
            command = [str(bin_dir / args[0]), *(a.replace("{url}", r.url) for a in args[1:])]
            s.spawn(command, env)
        rate = _time_counter(s, r.client(), plan)
    log(f"  {peer.label}: {rate:,.0f} jobs/s")
    return rate


def _time_counter(s: Stack, client: redis.Redis, plan: Plan) -> float:
    """From the first job done to the last (or to the cap), polling the counter every 5 ms."""
    deadline = time.monotonic() + plan.drain_timeout
    while (first := int(client.get(DONE_KEY) or 0)) == 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no job done; see {s.tmp}")
        time.sleep(0.005)
    start = time.monotonic()
    cap = start + plan.peer_cap_seconds
    done = first
    while done < plan.tasks and time.monotonic() < min(cap, deadline):
        time.sleep(0.005)
        done = int(client.get(DONE_KEY) or 0)
    return (done - first) / (time.monotonic() - start)


def run(plan: Plan) -> list[Figure]:
    reused = COURIER_RATES.get(plan)
    courier: list[float] = list(reused or [])
    rates: dict[str, list[float]] = {p.label: [] for p in PEERS}
    for i in range(plan.runs):
        log(f"{SCENARIO}: run {i + 1}/{plan.runs}")
        if reused is None:
            courier.append(measure_drain(COURIER, plan).rate)
        for peer in PEERS:
            rates[peer.label].append(measure_peer(peer, plan))
    versions = {p.venv: peer_version(VENVS / p.venv / "bin", p.venv) for p in PEERS}
    return [
        Figure(
            SCENARIO, f"drain, {p.label}", "jobs/s", rates[p.label],
            "courier defaults", courier,
            notes=f"{p.venv} {versions[p.venv]}", extra={"version": versions[p.venv]},
        )
        for p in PEERS
    ]  # fmt: skip
