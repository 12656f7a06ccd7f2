"""The inline pool: Celery's solo pool (each task in the worker's own process, main thread, no
hand-over to a pool child) with what prefork gives and solo does not: soft and hard time
limits, ``revoke(terminate=True)`` of a running task, and the same reports.

Why: with two messages in flight, prefork's hand-over of every task from the main process to a
child and back sets the drain rate (docs/performance/worker.md); one-process workers drain
about twice as fast at the same total concurrency, but Courier relies on time limits and
terminate.

As prefork reports them, through the request's own callbacks (``Request.on_failure``,
``on_timeout``, ``terminate``): a hard limit fails the task with ``TimeLimitExceeded`` and
acknowledges it (``acks_on_timeout``), a terminate marks it revoked; the same process then
serves the next task. A task that does not stop within the grace after its interrupt is
recorded so too, and the process exits with ``STUCK_EXIT_CODE`` (its supervisor restarts it;
the message, acknowledged only in memory, comes back after the visibility timeout and is
skipped as finished). A task that crashes the interpreter takes the worker with it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Collection
from signal import SIGTERM
from typing import Any

from billiard.einfo import ExceptionInfo
from celery.concurrency.base import apply_target
from celery.concurrency.solo import TaskPool as SoloPool
from celery.exceptions import Reject, SoftTimeLimitExceeded, Terminated, TimeLimitExceeded
from celery.signals import worker_ready
from celery.worker import state as worker_state

from worker.core import result_carry
from worker.core.settings import get_settings
from worker.pool.interrupts import Interrupted, Job, Outcome, Timekeeper
from worker.pool.revoke_listener import RevokeListener

logger = logging.getLogger(__name__)

# The exit status of a worker whose task would not stop (EX_SOFTWARE).
STUCK_EXIT_CODE = 70


def exception_info(exc: BaseException) -> ExceptionInfo:
    """Celery's callbacks take an ExceptionInfo, which reads the exception being handled."""
    try:
        raise exc
    except BaseException:
        return ExceptionInfo()


class TaskPool(SoloPool):
    """Selected with ``COURIER_WORKER_POOL=inline`` (Celery's ``worker_pool`` setting)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        del self.on_apply  # solo sets apply_target on the instance: this class's is below
        app, hostname = self.options.get("initargs") or (None, None)
        self.grace = get_settings().worker_pool_stop_grace_seconds
        self._clock = Timekeeper(self.grace, on_soft=self._warn_soft, on_stuck=self._exit_stuck)
        self._listener = (
            RevokeListener(app, str(hostname), self._heard, self._busy) if app else None
        )
        # Revoked ids the listener heard while a task ran, for the worker's revoked set.
        self._revoked_lock = threading.Lock()
        self._revoked: set[str] = set()

    # --- life ---

    def on_start(self) -> None:
        self._clock.start()
        if self._listener is not None:
            worker_ready.connect(self._on_worker_ready)
            self._listener.start()

    def on_stop(self) -> None:
        if self._listener is not None:
            worker_ready.disconnect(self._on_worker_ready)
            self._listener.stop()
        self._clock.stop()

    def _on_worker_ready(self, sender: Any, **_: Any) -> None:
        """The consumer (``worker_ready``'s sender) is what Celery's inspect handlers read:
        from now on the listener answers them while a task runs (``revoke_listener``)."""
        if self._listener is not None and getattr(sender.controller, "pool", None) is self:
            self._listener.inspect_with(sender)

    def on_terminate(self) -> None:
        self.on_stop()

    def running_job(self) -> Job | None:
        """The job the main thread runs, if any: read by a supervised worker's heartbeat
        (``worker/supervised.py``) from its own thread."""
        return self._clock.current

    def terminate_job(self, pid: int, signal: int | None = None) -> None:
        """Celery's own terminate (a request revoked before its acceptance): the job is
        stopped here and Celery announces the revocation itself."""
        job = self._clock.current
        if pid == os.getpid() and job is not None and job.task_id:
            self._clock.terminate({job.task_id}, int(signal or SIGTERM), announced=True)

    # --- one task ---

    def on_apply(
        self,
        target: Any,
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        callback: Any = None,
        accept_callback: Any = None,
        **options: Any,
    ) -> None:
        """``apply_target`` (solo's) around the job: Celery's request passes prefork's
        options too (``error_callback``, ``timeout_callback``, ``soft_timeout``, ``timeout``,
        ``correlation_id``: the task id)."""
        # What the last task's acknowledgement carries (its result) is written before this
        # task runs: a message of the same fetch, or a timer's, would otherwise run first.
        result_carry.flush_all()
        job = Job(
            options.pop("correlation_id", None),
            options.pop("soft_timeout", None),
            options.pop("timeout", None),
            options.pop("error_callback", None),
            options.pop("timeout_callback", None),
        )
        self._clock.begin(job)
        try:
            apply_target(
                self._body(job, target),
                args or (),
                kwargs,
                callback=lambda ret: self._report(job, ret, callback),
                accept_callback=accept_callback,
                **options,
            )
        finally:
            self._clock.end(job)
            self._mark_revoked()

    def _heard(self, task_ids: Collection[str], terminate: bool, signum: int) -> str | None:
        """The listener's revoke, in its thread; the id of the task it stopped, if any."""
        with self._revoked_lock:
            self._revoked.update(task_ids)
        return self._clock.terminate(task_ids, signum) if terminate else None

    def _busy(self) -> bool:
        return self._clock.current is not None

    def _mark_revoked(self) -> None:
        """In the main thread, which alone touches Celery's worker state: what the listener
        heard is revoked before the event loop takes the next message."""
        with self._revoked_lock:
            heard, self._revoked = self._revoked, set()
        if heard:
            worker_state.revoked.update(heard)

    def _body(self, job: Job, target: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                try:
                    self._clock.enter(job)
                    return target(*args, **kwargs)
                finally:
                    job.running = False
            except (Interrupted, SoftTimeLimitExceeded, Reject) as exc:
                # An interrupt unwound the task, or the soft limit reached Celery's own code
                # around the body (the body's is a failure Celery's tracer recorded), or a
                # Reject raised outside the body (a state Redis did not take:
                # ``result_backend.ResultNotStored``), which Celery's tracer lets through for
                # the pool to report: prefork's child reports it as an error, and so does this
                # pool, instead of letting it out of the event loop.
                return _Unwound(exc)

        return run

    def _report(self, job: Job, ret: Any, callback: Callable[[Any], Any] | None) -> None:
        self._clock.end(job)
        if job.outcome is Outcome.TERMINATED:
            self._report_terminated(job, job.error_callback)
        elif job.outcome is Outcome.HARD_TIME_LIMIT:
            self._report_hard_limit(job, job.error_callback)
        elif isinstance(ret, _Unwound):
            if job.error_callback is not None:
                job.error_callback(exception_info(ret.exc))
        elif isinstance(ret, ExceptionInfo):
            # apply_target's WorkerLostError for a task that raised SystemExit or the like:
            # prefork's child would have died; reported as its loss (solo passes it to the
            # success callback, which cannot read it).
            if job.error_callback is not None:
                job.error_callback(ret)
        elif callback is not None:
            callback(ret)

    def _report_hard_limit(self, job: Job, error_callback: Callable[..., Any] | None) -> None:
        """billiard's ``on_hard_timeout``: the result set to TimeLimitExceeded, then the
        request's timeout callback."""
        if error_callback is not None:
            error_callback(exception_info(TimeLimitExceeded(job.hard)))
        if job.timeout_callback is not None:
            job.timeout_callback(False, job.hard or 0)

    def _report_terminated(self, job: Job, error_callback: Callable[..., Any] | None) -> None:
        """Celery's ``Request.terminate`` (revoked: stored, acknowledged, announced), then the
        child's death as prefork reports it (``Terminated``, which the request ignores once
        revoked)."""
        request = worker_state.requests.get(job.task_id) if job.task_id else None
        if request is not None and not job.announced:
            request.terminate(self, signal=job.signum)
        if error_callback is not None:
            error_callback(exception_info(Terminated(job.signum)))

    def _warn_soft(self, job: Job) -> None:
        if job.timeout_callback is not None:
            job.timeout_callback(True, job.soft or 0)

    def _exit_stuck(self, job: Job) -> None:
        """The watchdog: the task did not stop within the grace after its interrupt (stuck in
        C code that never returns to Python, or blocking the signal): record its outcome as
        it would have been recorded, then end the process, the only way left to stop it."""
        assert job.outcome is not None
        logger.critical(
            "task did not stop within %ss of its %s: exiting the worker (status %s)",
            self.grace,
            job.outcome.value,
            STUCK_EXIT_CODE,
            extra={"task_id": job.task_id},
        )
        # In a thread of its own, bounded: the stuck main thread may hold a lock it needs.
        recorder = threading.Thread(target=self._record_stuck, args=(job,), daemon=True)
        recorder.start()
        recorder.join(timeout=self.grace)
        sys.stderr.flush()
        os._exit(STUCK_EXIT_CODE)

    def _record_stuck(self, job: Job) -> None:
        try:
            if job.outcome is Outcome.TERMINATED:
                self._report_terminated(job, None)
            elif job.timeout_callback is not None:
                job.timeout_callback(False, job.hard or 0)
        except Exception:
            logger.exception(
                "outcome of the stuck task not recorded", extra={"task_id": job.task_id}
            )


class _Unwound:
    """A task body left by an exception the pool sent (what to report is the job's outcome)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
