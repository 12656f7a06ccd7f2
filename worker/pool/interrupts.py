"""Stopping the task the worker's main thread runs: time limits and terminate, by signal.

Why a signal: the inline pool runs each task in the worker's main thread, as Celery's solo pool
does, so nothing can stop it from outside but an exception raised in that thread, and a signal
handler is the one place where Python lets another thread put one there. The timekeeper thread
decides when (the soft and hard limits of the running job, a terminate heard by the revoke
listener) and sends SIGALRM to the main thread alone (``pthread_kill``: a process-wide signal,
such as ``setitimer``'s, may be delivered to any thread not blocking it, and then does not
interrupt the main thread's system call). The handler raises what is pending for the job, only
while the task runs: never into the event loop, never into the pool's own reporting.

The hard limit and terminate raise an ``Interrupted``, a BaseException, so that a task's
``except Exception`` cannot swallow it; the soft limit raises Celery's own
``SoftTimeLimitExceeded``, an Exception the task may catch to clean up, as under prefork. What the
pool reports afterwards depends on what it did (``Job.outcome``), not on how the task unwound. A
task that does not come back within the grace after an interrupt (stuck in C code that never
returns to Python, or blocking the signal) is handed to ``on_stuck``, which ends the process.
"""

from __future__ import annotations

import enum
import math
import signal
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

INTERRUPT_SIGNAL = signal.SIGALRM


class Interrupted(BaseException):
    """Raised inside a task the pool stops; not an Exception, so ``except Exception`` lets it by."""


class HardTimeLimit(Interrupted):
    pass


class TerminateRequested(Interrupted):
    pass


class Outcome(enum.Enum):
    """What the pool did to a job, which decides how it is reported."""

    HARD_TIME_LIMIT = "hard time limit"
    TERMINATED = "terminate"


@dataclass(eq=False)
class Job:
    """One task in the pool, with the callbacks its Celery request gave (prefork's, too)."""

    task_id: str | None
    soft: float | None
    hard: float | None
    error_callback: Callable[..., Any] | None = None
    timeout_callback: Callable[[bool, float], Any] | None = None
    started: float = field(default_factory=time.monotonic)
    # Inside Celery's traced call (the task body and the tracer's work around it: prerun,
    # storing the result, postrun): only then may the handler raise, as prefork's signals
    # reach the child wherever it is.
    running: bool = False
    # The traced call returned (or unwound): nothing more is sent to it.
    done: bool = False
    pending: BaseException | None = None
    soft_sent: bool = False
    outcome: Outcome | None = None
    signum: int | None = None
    # A terminate Celery announced itself (``Request.terminate`` through ``terminate_job``).
    announced: bool = False
    interrupted_at: float | None = None

    def soft_deadline(self) -> float | None:
        usable = self.soft is not None and (self.hard is None or self.soft < self.hard)
        if not usable or self.soft_sent or self.outcome is not None:
            return None
        assert self.soft is not None
        return self.started + self.soft

    def next_deadline(self) -> float | None:
        deadlines = [d for d in (self.soft_deadline(), self.hard_deadline()) if d is not None]
        return min(deadlines, default=None)

    def hard_deadline(self) -> float | None:
        if self.hard is None or self.outcome is not None:
            return None
        return self.started + self.hard


class Timekeeper:
    """The running job's clock and the one way into the main thread.

    ``on_soft(job)`` runs in this thread when the soft limit was sent (prefork's warning);
    ``on_stuck(job)`` when the job did not end within ``grace`` seconds of its interrupt.
    """

    def __init__(
        self,
        grace: float,
        on_soft: Callable[[Job], None],
        on_stuck: Callable[[Job], None],
    ) -> None:
        self.grace = grace
        self._on_soft = on_soft
        self._on_stuck = on_stuck
        # Reentrant: the signal handler takes it on the main thread, which may hold it already.
        self._lock = threading.Condition(threading.RLock())
        self._job: Job | None = None
        # When the timekeeper looks next (it sleeps until then): a job whose first deadline is
        # later needs no wake-up, so a task costs the thread nothing unless a limit is near.
        self._wake_at = -math.inf
        self._stopped = False
        self._main = threading.main_thread()
        self._previous_handler: Any = None
        self._thread = threading.Thread(
            target=self._run, daemon=True, name="courier-pool-timekeeper"
        )

    def start(self) -> None:
        if threading.current_thread() is not self._main:
            raise RuntimeError(
                "Courier's inline pool runs tasks in the main thread and stops them by signal: "
                "start the worker from the main thread (celery worker does)"
            )
        self._previous_handler = signal.signal(INTERRUPT_SIGNAL, self._on_signal)
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._lock.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self._previous_handler is not None and threading.current_thread() is self._main:
            signal.signal(INTERRUPT_SIGNAL, self._previous_handler)
            self._previous_handler = None

    @property
    def current(self) -> Job | None:
        return self._job

    # --- the main thread: the job's life ---

    def begin(self, job: Job) -> None:
        # No wake-up: a job being accepted has nothing due (``_due``); ``enter`` wakes the
        # thread when the job's first deadline comes before its next look, ``_interrupt`` when
        # there is an interrupt to watch. A wake-up here cost a thread switch per task.
        with self._lock:
            self._job = job

    def enter(self, job: Job) -> None:
        """The task body starts now: the limits count from here (prefork's from the child's
        acceptance), and an interrupt that came before it (a terminate while accepting) is
        raised at once."""
        with self._lock:
            job.started = time.monotonic()
            job.running = True
            deadline = job.next_deadline()
            if deadline is not None and deadline < self._wake_at:
                self._lock.notify_all()
            self._raise_pending(job)

    def end(self, job: Job) -> None:
        with self._lock:
            job.running, job.done = False, True
            if self._job is job:
                self._job = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        with self._lock:
            job = self._job
            if job is not None and job.running:
                self._raise_pending(job)

    @staticmethod
    def _raise_pending(job: Job) -> None:
        exc, job.pending = job.pending, None
        if exc is not None:
            raise exc

    # --- other threads ---

    def terminate(
        self, task_ids: Collection[str], signum: int, announced: bool = False
    ) -> str | None:
        """Stop the running job if it is one of ``task_ids``; the id it stopped, if any."""
        with self._lock:
            job = self._job
            if job is None or job.done or job.outcome is not None or job.task_id not in task_ids:
                return None
            job.outcome, job.signum, job.announced = Outcome.TERMINATED, signum, announced
            self._interrupt(job, TerminateRequested(signum))
            return job.task_id

    def _interrupt(self, job: Job, exc: BaseException) -> None:
        if isinstance(exc, Interrupted):
            job.interrupted_at = time.monotonic()
        if job.pending is None or isinstance(exc, Interrupted):
            job.pending = exc
        self._lock.notify_all()
        if self._main.ident is not None:
            signal.pthread_kill(self._main.ident, INTERRUPT_SIGNAL)

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._stopped:
                    return
                job, now = self._job, time.monotonic()
                action, self._wake_at = self._due(job, now) if job else (None, math.inf)
                if action is None:
                    timeout = None if self._wake_at == math.inf else self._wake_at - now
                    self._lock.wait(timeout)
                    self._wake_at = -math.inf  # awake: looks again before sleeping
                    continue
            assert job is not None
            action(job)

    def _due(self, job: Job, now: float) -> tuple[Callable[[Job], None] | None, float]:
        """What is due for ``job`` now (done under the lock), else when to look again."""
        if job.done or (not job.running and job.outcome is None):
            return None, math.inf  # between tasks, or accepting one: enter() says when
        if job.interrupted_at is not None:
            stuck_at = job.interrupted_at + self.grace
            if now < stuck_at:
                return None, stuck_at
            job.interrupted_at = None  # reported once
            return self._on_stuck, math.inf
        hard = job.hard_deadline()
        if hard is not None and now >= hard:
            job.outcome = Outcome.HARD_TIME_LIMIT
            self._interrupt(job, HardTimeLimit(job.hard))
            return None, now + self.grace
        soft = job.soft_deadline()
        if soft is not None and now >= soft:
            job.soft_sent = True
            self._interrupt(job, SoftTimeLimitExceeded(job.soft))
            return self._on_soft, -math.inf
        deadline = job.next_deadline()
        return None, math.inf if deadline is None else deadline
