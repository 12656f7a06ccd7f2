"""The child's half of the inline supervisor (``worker/supervisor.py``): its heartbeat.

Connected by ``worker/celery_app.py``; it does nothing unless the supervisor named a beat file
(``HEARTBEAT_ENV``). The beat thread starts with the app, before the worker is ready, so a
child that hangs while starting is seen too; from ``worker_ready`` on it reports whether the
consumer is connected (what a worker's own ``/readyz`` reports, ``worker/metrics_server.py``).
``task_prerun`` writes the task slot: the task that starts, when, and when the inline pool
would end it.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery.bootsteps import RUN  # type: ignore[attr-defined]
from celery.signals import task_prerun, worker_ready

from worker.core.heartbeat import (
    BEAT_INTERVAL,
    HEARTBEAT_ENV,
    READY,
    RECONNECTING,
    STARTING,
    STOPPED,
    Beat,
    TaskSlot,
    slot_path,
    write_beat,
)

if TYPE_CHECKING:
    from worker.pool.interrupts import Job


class _Worker:
    """What the beat and the slot read, set at ``worker_ready``."""

    state: Callable[[], str] = staticmethod(lambda: STARTING)
    job: Callable[[], Job | None] = staticmethod(lambda: None)
    grace: float = 0.0
    slot: TaskSlot | None = None


def _ready(sender: Any, **_: Any) -> None:
    blueprint = sender.controller.blueprint
    pool = sender.controller.pool

    def state() -> str:
        if blueprint.state != RUN:
            return STOPPED
        # None from a connection loss until Celery connected again (as the worker's /readyz).
        return READY if sender.connection is not None else RECONNECTING

    _Worker.state = staticmethod(state)
    running_job = getattr(pool, "running_job", None)
    if running_job is not None:  # Courier's inline pool
        _Worker.job = staticmethod(running_job)
        _Worker.grace = float(pool.grace)


def give_up_at(job: Job, grace: float) -> float:
    """When the inline pool ends ``job`` at the latest: its hard limit, then ``grace`` to stop
    and ``grace`` to record the outcome before the process exits; NaN without a hard limit."""
    if job.hard is None:
        return math.nan
    return job.started + job.hard + 2 * grace


def _task_started(task_id: str, **_: Any) -> None:
    job = _Worker.job()
    if _Worker.slot is not None and job is not None:
        _Worker.slot.set(task_id, job.started, give_up_at(job, _Worker.grace))


def _beat(path: Path, parent: int) -> None:
    pid = os.getpid()
    while True:
        if os.getppid() != parent:
            # The supervisor is gone (SIGKILLed with its pod, or in a test): so is this child,
            # as it would be with the pod, rather than an orphan consuming on.
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):  # the supervisor sees a stale beat
            job = _Worker.job()
            task_id = job.task_id if job is not None else None
            beat = Beat(pid=pid, at=time.monotonic(), state=_Worker.state(), task_id=task_id)
            write_beat(path, beat)
        time.sleep(BEAT_INTERVAL)


def connect_supervised() -> None:
    path = os.environ.get(HEARTBEAT_ENV)
    if not path:
        return
    _Worker.slot = TaskSlot(slot_path(Path(path)))
    worker_ready.connect(_ready, weak=False, dispatch_uid="courier.supervised_ready")
    task_prerun.connect(_task_started, weak=False, dispatch_uid="courier.supervised_started")
    beat = threading.Thread(
        target=_beat, args=(Path(path), os.getppid()), daemon=True, name="supervisor-heartbeat"
    )
    beat.start()
