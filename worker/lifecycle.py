"""What happens to every Courier task before its body runs, in one place and in this order.

1. **The start stamp.** The task's record gets its start time and attempt count, and Celery's
   STARTED state is stored, in one Redis round trip that also reads whether the task was
   revoked while queued or already finished (a redelivered duplicate). When the fetch that
   took the message did this already (``worker/transport/stamp.py``: a worker that hands each
   message to an idle pool process as it takes it), its answer rides in the request and no
   round trip is made. Celery's own ``task_track_started`` write is off: it would be a second
   round trip.
2. **The queue wait.** Seconds from the enqueue (or the ETA of a delayed task or a retry) to
   now, observed in the queue-wait histograms, or counted as unmeasured when a producer
   stamped no enqueue time.
3. **The check**, first thing in the task's body (``begin``): a finished task is skipped, a
   revoked one is stored as revoked and skipped (this worker missed the broadcast), anything
   else runs, with the queue wait on its execution span.

Steps 1 and 2 run in one ``task_prerun`` handler, so their order does not depend on the order
in which handlers were connected; what they learnt reaches step 3 as one ``TaskStart`` on the
request. The counters of started, finished and failed tasks are ``worker/signals.py``'s.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, cast

from celery import Celery, Task
from celery.exceptions import Ignore
from celery.signals import celeryd_init, task_prerun
from opentelemetry import trace
from opentelemetry.instrumentation.utils import suppress_instrumentation

from worker.core import metrics
from worker.core.names import ENQUEUED_AT_HEADER
from worker.core.queue_stats import due_time
from worker.core.records import StartCheck, TaskRecords
from worker.core.result_backend import CourierRedisBackend
from worker.core.settings import Settings
from worker.transport.stamp import FINISHED, REVOKED, START_CHECK_HEADER, STARTED, StartStamp

logger = logging.getLogger(__name__)

# The request attribute holding the TaskStart of the current attempt.
TASK_START = "courier_task_start"
# Seconds between enqueue (or ETA) and start, on the execution span.
QUEUE_WAIT_ATTRIBUTE = "courier.queue_wait_seconds"
# The fetch's start check, as the header it puts in the message (Celery copies it into the
# request under the header's name).
_FETCH_CHECKS = {
    STARTED: StartCheck(revoked=False, finished=False),
    REVOKED: StartCheck(revoked=True, finished=False),
    FINISHED: StartCheck(revoked=False, finished=True),
}


@dataclass(frozen=True)
class TaskStart:
    """What steps 1 and 2 learnt: the start check (None when the task was not stamped) and the
    queue wait in seconds (None when it could not be measured)."""

    check: StartCheck | None
    queue_wait: float | None


def _stamp_start(task: Task, request: Any, task_id: str, records: TaskRecords) -> StartCheck:  # type: ignore[type-arg]
    fetched = getattr(request, START_CHECK_HEADER, None)
    if isinstance(fetched, str) and fetched in _FETCH_CHECKS:
        return _FETCH_CHECKS[fetched]
    backend = cast(CourierRedisBackend, task.backend)
    started = backend.started_meta(task_id, request)
    delivery = request.delivery_info or {}
    queue = str(delivery.get("routing_key") or "")
    # Before the execution span opens, so no span could have a parent (tracing.redis_spans): the
    # instrumentation would format the command for nothing.
    with suppress_instrumentation():
        return records.mark_started(task_id, started, task.name, queue)


def _queue_wait(task: Task, request: Any, now: float, queues: Collection[str]) -> float | None:  # type: ignore[type-arg]
    name = task.name
    queue = metrics.queue_label((request.delivery_info or {}).get("routing_key"), queues)
    due = due_time(getattr(request, ENQUEUED_AT_HEADER, None), request.eta)
    if due is None:
        metrics.labelled(metrics.QUEUE_WAIT_UNMEASURED, name, queue).inc()
        return None
    wait = max(0.0, now - due)
    metrics.labelled(metrics.COURIER_QUEUE_WAIT, name, queue).observe(wait)
    hostname = metrics.host_label(request.hostname or "")
    metrics.labelled(metrics.TASK_QUEUE_WAIT_TIME, name, hostname, queue).observe(wait)
    return wait


def connect(
    app: Celery, records: Callable[[], TaskRecords], settings: Settings, tasks: Collection[str]
) -> None:
    """Step 1 for ``app``'s own tasks (not Celery's built-ins), step 2 for every task this
    process runs, and the start stamp at fetch armed in a worker whose pool takes a message
    only for an idle process. ``records`` is asked at each stamp: each process (a prefork
    child) opens its own client on first use."""

    def before_task(sender: Task, task_id: str, **_: Any) -> None:  # type: ignore[type-arg]
        request = sender.request  # a property: Celery's request stack, looked up at each read
        own = sender.app is app and not sender.name.startswith("celery.")
        check = _stamp_start(sender, request, task_id, records()) if own else None
        wait = _queue_wait(sender, request, time.time(), settings.queues)
        setattr(request, TASK_START, TaskStart(check, wait))

    def arm_start_stamp(sender: str, instance: Any, **_: Any) -> None:
        # A worker's main process, before its consumer starts: its node name is known now.
        if instance.app is app and app.conf.worker_prefetch_multiplier == 1:
            app.courier_start_stamp = StartStamp(
                hostname=sender, pid=os.getpid(), ttl=settings.result_expires, tasks=set(tasks)
            )

    task_prerun.connect(before_task, weak=False)
    celeryd_init.connect(arm_start_stamp, weak=False)


def begin(task: Task) -> None:  # type: ignore[type-arg]
    """Step 3, the first thing a task's body does: ``Ignore`` when it must not run."""
    request = task.request
    start: TaskStart | None = getattr(request, TASK_START, None)
    check = start.check if start is not None else None
    task_id = str(request.id)
    if check is not None and check.finished:
        # A redelivered duplicate (its worker died before acknowledging): already done.
        logger.info("duplicate delivery of a finished task skipped", extra={"task_id": task_id})
        raise Ignore()
    if check is not None and check.revoked:
        # Revoked while queued, and this worker missed the broadcast (e.g. it started later).
        task.backend.mark_as_revoked(task_id, reason="revoked", request=request)
        raise Ignore()
    if start is not None and start.queue_wait is not None:
        trace.get_current_span().set_attribute(QUEUE_WAIT_ATTRIBUTE, start.queue_wait)
