"""Turns a registered ``TaskSpec`` into a Celery task, and maps outcomes in one place.

validate payload -> call the plain function -> result; a ``TransientError`` (or a type the task
lists in ``retry_on``) is retried with exponential backoff up to the task's ``max_retries``,
anything else fails the task with its type and message in the status.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from functools import cached_property
from typing import Any, cast

import redis
from celery import Celery, Task
from celery.exceptions import Ignore
from celery.signals import task_prerun
from opentelemetry import trace
from opentelemetry.instrumentation.utils import suppress_instrumentation
from pydantic import ValidationError

from worker.core.artifacts import ArtifactStore
from worker.core.errors import InvalidPayload, PermanentError, TransientError
from worker.core.records import StartCheck, TaskRecords
from worker.core.redis_client import create_redis
from worker.core.result_backend import CourierRedisBackend
from worker.core.settings import Settings
from worker.registry import TaskSpec
from worker.transport.headroom import past_maxmemory
from worker.transport.stamp import FINISHED, REVOKED, START_CHECK_HEADER, STARTED

logger = logging.getLogger(__name__)


def backoff_seconds(retries: int, base: float, cap: float) -> float:
    """``base * 2**retries`` capped, plus up to 10% jitter so retries of a burst spread out."""
    delay = min(cap, base * (2**retries))
    return float(delay * (1 + random.random() * 0.1))


class WorkerResources:
    """Per-process clients, created on first use so each prefork child opens its own."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @cached_property
    def redis(self) -> redis.Redis:
        return create_redis(self.settings)

    @cached_property
    def records(self) -> TaskRecords:
        return TaskRecords(self.redis, self.settings.result_expires)

    @cached_property
    def artifacts(self) -> ArtifactStore:
        return ArtifactStore(self.redis, self.settings.artifact_ttl)


@dataclass(frozen=True)
class RunContext:
    task_id: str
    retries: int
    settings: Settings
    artifacts: ArtifactStore
    records: TaskRecords
    backend: CourierRedisBackend


# The request attribute holding the StartCheck: the fetch's, when it stamped the task (its
# header, which Celery copies into the request: worker/transport/stamp.py), else the child's.
START_CHECK = START_CHECK_HEADER
_FETCH_CHECKS = {
    STARTED: StartCheck(revoked=False, finished=False),
    REVOKED: StartCheck(revoked=True, finished=False),
    FINISHED: StartCheck(revoked=False, finished=True),
}


def check_result_size(result: Any, limit: int) -> None:
    """Results live in Redis next to the queue: an oversized one fails its task instead."""
    size = len(json.dumps(result, default=str))
    if size > limit:
        raise PermanentError(
            f"result of {size} bytes exceeds COURIER_MAX_RESULT_BYTES ({limit} bytes)"
        )


QUEUE_WAIT = "courier_queue_wait"  # set by signals._task_started
# Seconds between enqueue (or ETA) and start, on the execution span.
QUEUE_WAIT_ATTRIBUTE = "courier.queue_wait_seconds"


def connect_start_stamp(app: Celery, resources: WorkerResources) -> None:
    """In ``task_prerun``, one round trip stamps ``started_at`` and stores Celery's STARTED
    state together (Celery's own ``task_track_started`` write is off: it would be a second
    round trip per task), so a client never sees ``started`` without a start time; the
    revoked flag read in the same call is left on the request for the task body. A task the
    fetch that took it stamped already (``worker/transport/stamp.py``) makes no round trip:
    the fetch's check is in its request."""

    def stamp(sender: Task, task_id: str, **_: Any) -> None:  # type: ignore[type-arg]
        if sender.app is app and not sender.name.startswith("celery."):
            given = getattr(sender.request, START_CHECK, None)
            fetched = _FETCH_CHECKS.get(given) if isinstance(given, str) else None
            if fetched is not None:
                setattr(sender.request, START_CHECK, fetched)
                return
            backend = cast(CourierRedisBackend, sender.backend)
            started = backend.started_meta(task_id, sender.request)
            # Before the execution span opens, so no span could have a parent (client_spans):
            # the instrumentation would format the command for nothing.
            delivery = sender.request.delivery_info or {}
            queue = str(delivery.get("routing_key") or "")
            with suppress_instrumentation():
                check = resources.records.mark_started(task_id, started, sender.name, queue)
            setattr(sender.request, START_CHECK, check)

    task_prerun.connect(stamp, weak=False)


def positional_arguments(name: str, args: tuple[Any, ...]) -> str:
    return (
        f"{name!r} takes its payload as keyword arguments, not {len(args)} positional "
        "argument(s): send kwargs={...}; in a chain, a mutable signature (.s()) passes the "
        "previous task's result as a positional argument: use an immutable one (.si(...)) "
        "or set the payload as kwargs"
    )


def bind_task(app: Celery, spec: TaskSpec, resources: WorkerResources) -> Task:  # type: ignore[type-arg]
    settings = resources.settings

    limits = settings.time_limits_for(spec.name)
    retry_on: tuple[type[Exception], ...] = (TransientError, *spec.retry_on)

    # typing=False: Celery checks a call's arguments against run()'s signature when a signature
    # is applied, also inside a worker publishing the next step of a chain, where the TypeError
    # failed the step whose body had just succeeded. Positional arguments reach run() instead
    # and fail there, as InvalidPayload, with what to do about them.
    # shared=False: the task belongs to this app; Celery's default adds it to every app the
    # process finalizes (a team's own Celery client beside Courier's in one process).
    @app.task(  # type: ignore[call-overload,untyped-decorator]  # stubs want int limits
        name=spec.name,
        bind=True,
        shared=False,
        typing=False,
        max_retries=spec.max_retries,
        soft_time_limit=limits.soft,
        time_limit=limits.hard,
    )
    def run(self: Task, /, *args: Any, **kwargs: Any) -> Any:  # type: ignore[type-arg]
        task_id = str(self.request.id)
        check: StartCheck | None = getattr(self.request, START_CHECK, None)
        if check is not None and check.finished:
            # A redelivered duplicate (its worker died before acknowledging): already done.
            logger.info("duplicate delivery of a finished task skipped", extra={"task_id": task_id})
            raise Ignore()
        if check is not None and check.revoked:
            # Revoked while queued, and this worker missed the broadcast (e.g. it started later).
            self.backend.mark_as_revoked(task_id, reason="revoked", request=self.request)
            raise Ignore()
        if args:
            raise InvalidPayload(positional_arguments(spec.name, args))
        try:
            payload = spec.payload.model_validate(kwargs)
        except ValidationError as exc:
            raise InvalidPayload(f"payload of {spec.name!r} is invalid: {exc}") from None
        wait = getattr(self.request, QUEUE_WAIT, None)
        if wait is not None:
            trace.get_current_span().set_attribute(QUEUE_WAIT_ATTRIBUTE, wait)
        ctx = RunContext(
            task_id,
            self.request.retries,
            settings,
            resources.artifacts,
            resources.records,
            cast(CourierRedisBackend, self.backend),
        )
        try:
            result = spec.func(payload, ctx)
        except retry_on as exc:
            countdown = backoff_seconds(
                self.request.retries,
                settings.retry_backoff_seconds,
                settings.retry_backoff_max_seconds,
            )
            # Celery acknowledges a task whose retry it could not publish (Reject without
            # requeue): the task would be lost. A full Redis must still take the retry, which
            # replaces the message acknowledged right after it (worker/transport/headroom.py).
            with past_maxmemory():
                raise self.retry(exc=exc, countdown=countdown) from None
        check_result_size(result, settings.max_result_bytes)
        return result

    run.__doc__ = spec.description
    return run  # type: ignore[no-any-return]
