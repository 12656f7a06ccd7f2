"""``python -m worker.supervisor [celery worker options...]``: N one-process workers in one pod.

Why: Courier's inline pool runs one task at a time in the worker's own process, and drains
faster than prefork at the same total concurrency (docs/performance/worker.md); but alone it
makes a pod one task at a time. Like gunicorn's arbiter for the API, this supervisor starts
``--concurrency`` inline workers (``celery -A worker.celery_app worker``, each
``--concurrency=1`` and its own node name ``<name>-<i>@<host>``, so ``celery inspect``, Flower
and the revoke mailbox see each), so ``worker.concurrency`` means the same for both pools.

- With ``COURIER_WORKER_POOL=prefork`` it execs Celery unchanged: Celery stays PID 1.
- SIGTERM, SIGINT and SIGQUIT go to every child (each in its own session: a terminal's Ctrl-C
  reaches the supervisor alone, so a child never sees two, which Celery takes as a cold
  shutdown). It exits once all children have, non-zero if one failed.
- A child that exits on its own (a crash, the inline pool's stuck exit) is started again after
  a backoff; its unacknowledged message comes back after the visibility timeout.
- A child whose heartbeat (``worker/core/heartbeat.py``) stops past the time its pool would have
  stopped the task itself (a task in C code holding the GIL, where the pool's timekeeper thread
  cannot run) is SIGKILLed, the task stored as failed with ``TimeLimitExceeded`` (so its
  redelivery is skipped as finished), and the child started again.
- The pod's port (``COURIER_WORKER_METRICS_PORT``) is served here: ``/metrics`` summed over the
  children (prometheus-client multiprocess mode), the queue gauges under the cluster lease,
  ``/healthz`` (200 while the supervisor runs), ``/readyz`` (200 when Redis answers and every
  child consumes).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from worker.core.heartbeat import (
    BEAT_INTERVAL,
    HEARTBEAT_ENV,
    READY,
    STARTING,
    Beat,
    read_beat,
    read_slot,
    slot_path,
)
from worker.core.logging import configure_logging
from worker.core.multiproc import ensure_multiproc_dir, mark_process_dead, wipe_multiproc_dir
from worker.core.settings import Settings, get_settings

logger = logging.getLogger("worker.supervisor")

CELERY_WORKER = ("-m", "celery", "-A", "worker.celery_app", "worker")
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
# How long a child may take from its start to its first beat (the app's imports): the chart's
# startup probe allows two minutes.
FIRST_BEAT_SECONDS = 120.0
# Restart backoff: 1 s, doubling to 30 s; reset once a child has run this long.
BACKOFF_FIRST, BACKOFF_MAX, BACKOFF_RESET = 1.0, 30.0, 30.0
TICK = 0.2
# A child that exits this many times in a row before it was ever ready cannot start (a bad
# setting stops a worker at start-up): the supervisor exits, so the pod restarts visibly
# (CrashLoopBackOff) instead of retrying out of sight.
GIVE_UP_AFTER_FAILED_STARTS = 5
# A child silent this long between tasks is taken as hung (a liveness probe's minute): a busy
# node may starve a healthy child's beat for seconds, and no task limit applies there.
IDLE_SILENT_SECONDS = 60.0


@dataclass(frozen=True)
class WorkerArgs:
    """The worker options, split into what the supervisor sets per child and the rest."""

    concurrency: int
    name: str
    host: str
    rest: tuple[str, ...]


def parse_worker_args(argv: list[str]) -> WorkerArgs:
    """``--concurrency``/``-c``, ``--hostname``/``-n`` and ``--pool``/``-P`` in any of Celery's
    spellings; every other option is passed on to each child as given."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("-c", "--concurrency", type=int, default=None)
    parser.add_argument("-n", "--hostname", default="")
    parser.add_argument("-P", "--pool", default=None)
    known, rest = parser.parse_known_args(argv)
    concurrency = known.concurrency if known.concurrency is not None else os.cpu_count() or 1
    if concurrency < 1:
        raise SystemExit(f"--concurrency must be at least 1, not {concurrency}")
    # Celery's node name: "name@host"; without "@" it is the host, the name "celery".
    name, at, host = str(known.hostname).partition("@")
    if not at:
        name, host = "celery", name
    return WorkerArgs(concurrency, name or "celery", host or "%h", tuple(rest))


def child_argv(args: WorkerArgs, index: int) -> list[str]:
    """One inline worker: the pool comes from ``COURIER_WORKER_POOL`` (Celery's ``--pool``
    accepts only Celery's own pool names)."""
    node = f"{args.name}-{index}@{args.host}"
    return [sys.executable, *CELERY_WORKER, *args.rest, "--concurrency=1", f"--hostname={node}"]


@dataclass
class Child:
    index: int
    argv: list[str]
    heartbeat: Path
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float = 0.0
    failures: int = 0
    # Exits in a row before a first READY beat: a child that cannot start (a bad setting).
    failed_starts: int = 0
    ready: bool = False
    warned_unbounded: bool = False
    # The stop signal was sent to the current process (one started while the handler ran
    # gets it from the loop).
    signalled: bool = False
    exits: list[int] = field(default_factory=list)

    def start(self, env: dict[str, str]) -> None:
        self.heartbeat.unlink(missing_ok=True)
        slot_path(self.heartbeat).unlink(missing_ok=True)
        self.process = subprocess.Popen(
            self.argv,
            env={**env, HEARTBEAT_ENV: str(self.heartbeat)},
            start_new_session=True,
        )
        self.started_at = time.monotonic()
        self.signalled = False
        self.ready = False
        logger.info("worker child started", extra={"child": self.index, "pid": self.process.pid})

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def beat(self) -> Beat | None:
        beat = read_beat(self.heartbeat)
        # A beat of a previous process (replaced before it wrote one) is no beat.
        if beat is None or self.process is None or beat.pid != self.process.pid:
            return None
        return beat


class Supervisor:
    def __init__(self, args: WorkerArgs, settings: Settings, workdir: Path) -> None:
        self.settings = settings
        self.stopping = False
        self.gave_up = False
        self.stop_signal = signal.SIGTERM
        self.grace = settings.worker_pool_stop_grace_seconds
        # A beat older than this is stale: the pool's grace plus a few missed beats.
        self.stale = self.grace + 3 * BEAT_INTERVAL
        self.env = {
            **os.environ,
            # The pod's port is the supervisor's; the children report through their beats.
            "COURIER_WORKER_METRICS_PORT": "0",
            "COURIER_WORKER_POOL": "inline",
        }
        self.children = [
            Child(i, child_argv(args, i), workdir / f"child-{i}.json")
            for i in range(1, args.concurrency + 1)
        ]

    # --- signals ---

    def install_signals(self) -> None:
        for signum in FORWARDED:
            signal.signal(signum, self._forward)

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        self.stop(signum)

    def stop(self, signum: int) -> None:
        self.stopping = True
        self.stop_signal = signal.Signals(signum)
        logger.info("stopping the worker children", extra={"signal": self.stop_signal.name})
        for child in self.children:
            self._signal(child)

    def _signal(self, child: Child) -> None:
        if child.process is not None and child.process.poll() is None:
            child.signalled = True
            child.process.send_signal(self.stop_signal)

    # --- the loop ---

    def run(self) -> int:
        for child in self.children:
            if not self.stopping:
                child.start(self.env)
        while True:
            now = time.monotonic()
            for child in self.children:
                self._check(child, now)
            if self.stopping and not any(child.alive for child in self.children):
                break
            time.sleep(TICK)
        failed = [code for child in self.children for code in child.exits if code != 0]
        return 1 if failed or self.gave_up else 0

    def _check(self, child: Child, now: float) -> None:
        process = child.process
        if process is not None and process.poll() is not None:
            self._exited(child, process, now)
        elif process is None and not self.stopping and now >= child.restart_at:
            child.start(self.env)
        elif process is not None:
            if self.stopping and not child.signalled:
                self._signal(child)
            self._watch(child, now)

    def _exited(self, child: Child, process: subprocess.Popen[bytes], now: float) -> None:
        code = process.returncode
        child.process = None
        mark_process_dead(process.pid)
        if self.stopping:
            child.exits.append(code)
            logger.info("worker child exited", extra={"child": child.index, "status": code})
            return
        child.failed_starts = 0 if child.ready else child.failed_starts + 1
        if child.failed_starts >= GIVE_UP_AFTER_FAILED_STARTS:
            logger.error(
                "worker child cannot start: stopping the supervisor",
                extra={"child": child.index, "status": code, "attempts": child.failed_starts},
            )
            self.gave_up = True
            self.stop(signal.SIGTERM)
            return
        ran = now - child.started_at
        child.failures = 1 if ran >= BACKOFF_RESET else child.failures + 1
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (child.failures - 1))
        child.restart_at = now + delay
        logger.warning(
            "worker child exited unexpectedly: restarting it",
            extra={"child": child.index, "pid": process.pid, "status": code, "in": delay},
        )

    def _watch(self, child: Child, now: float) -> None:
        """SIGKILL a child whose beats stopped past the time its own pool would have acted."""
        beat = child.beat()
        if beat is None:
            if now - child.started_at > FIRST_BEAT_SECONDS:
                self._kill(child, None, "no heartbeat since its start")
            return
        child.ready = child.ready or beat.state == READY
        if now - beat.at <= self.stale:
            child.warned_unbounded = False
            return
        last = read_slot(slot_path(child.heartbeat))
        if last is None or not last.running_at(beat):
            # Silent between tasks: its event loop itself hangs (or the node is starved).
            if now - beat.at > IDLE_SILENT_SECONDS:
                self._kill(child, None, f"no heartbeat for {now - beat.at:.1f}s, between tasks")
            return
        if last.give_up_at is None:
            # As under prefork, nothing stops a task without a hard limit.
            if not child.warned_unbounded:
                child.warned_unbounded = True
                logger.warning(
                    "worker child silent, its task has no hard time limit: left running",
                    extra={"child": child.index, "task_id": last.task_id, "silent": now - beat.at},
                )
            return
        if now > last.give_up_at:
            self._kill(child, last.task_id, f"no heartbeat for {now - beat.at:.1f}s")

    def _kill(self, child: Child, task_id: str | None, why: str) -> None:
        assert child.process is not None
        logger.error(
            "worker child stuck (a task holding the GIL?): killing it",
            extra={"child": child.index, "pid": child.process.pid, "task_id": task_id, "why": why},
        )
        child.process.kill()
        if task_id is not None:
            record_hard_limit(task_id, self.settings)

    # --- readiness ---

    def children_problem(self) -> tuple[bool, str | None]:
        """(starting, the first child that does not consume) for the pod's ``/readyz``."""
        for child in self.children:
            beat = child.beat() if child.alive else None
            state = beat.state if beat is not None else STARTING
            if beat is not None and time.monotonic() - beat.at > self.stale:
                state = "silent"
            if state != READY:
                return state == STARTING, f"worker child {child.index}: {state}"
        return False, None


def record_hard_limit(task_id: str, settings: Settings) -> None:
    """Store the task as failed by its hard limit, as the pool would have: its message, back
    after the visibility timeout, is then skipped as finished instead of killing again."""
    from celery.exceptions import TimeLimitExceeded

    from worker.celery_config import create_celery_app

    try:
        app = create_celery_app(settings)
        try:
            app.backend.mark_as_failure(task_id, TimeLimitExceeded(settings.task_time_limit))
        finally:
            app.close()
    except Exception:
        logger.exception("outcome of the stuck task not recorded", extra={"task_id": task_id})


def serve(supervisor: Supervisor, settings: Settings, args: WorkerArgs) -> None:
    """The pod's port, with the worker's own server: only readiness is the children's."""
    from celery.utils.nodenames import host_format

    from worker.celery_config import PRIORITY_STEPS
    from worker.core import metrics
    from worker.metrics_server import MetricsServer, worker_port_server

    # The children share the pod's ``hostname`` label, whose ``celery_worker_up`` is the
    # largest of the live processes' values (a dead child's 1 goes with it): this 0 is what
    # the pod reads before a child is ready and while none is alive.
    host = metrics.host_label(host_format(f"{args.name}@{args.host}"))
    metrics.WORKER_UP.labels(host).set(0)

    class PodServer(MetricsServer):
        def readiness(self) -> tuple[str, str | None]:
            problem = self.redis_answers()
            if problem is not None:
                return "unavailable", problem
            starting, problem = supervisor.children_problem()
            if problem is not None:
                return ("starting" if starting else "unavailable"), problem
            return "ready", None

    server = worker_port_server(settings, PRIORITY_STEPS, PodServer)
    server.ready.set()
    server.start()
    logger.info("worker metrics server listening", extra={"port": server.port})


def main(argv: list[str]) -> int:
    settings = get_settings()
    if settings.worker_pool != "inline":
        # The supervisor out of the way: Celery replaces it, PID 1 as before.
        os.execv(sys.executable, [sys.executable, *CELERY_WORKER, *argv])
    configure_logging(settings.log_level)
    args = parse_worker_args(argv)
    # Before prometheus-client is imported: the children inherit the directory.
    ensure_multiproc_dir("courier-worker-metrics-")
    wipe_multiproc_dir()
    workdir = Path(tempfile.mkdtemp(prefix="courier-supervisor-"))  # the pod's /tmp
    supervisor = Supervisor(args, settings, workdir)
    supervisor.install_signals()
    if settings.worker_metrics_port:
        serve(supervisor, settings, args)
    try:
        return supervisor.run()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
