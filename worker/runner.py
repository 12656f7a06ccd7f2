"""Turns a registered ``TaskSpec`` into a Celery task, and maps outcomes in one place.

The start stamp, the queue wait and the duplicate/revocation check run before, in
``worker/lifecycle.py``; then: validate payload -> call the plain function -> result; a
``TransientError`` (or a type the task lists in ``retry_on``) is retried with exponential
backoff up to the task's ``max_retries``, anything else fails the task with its type and
message in the status.
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
from pydantic import ValidationError

from worker import lifecycle
from worker.core.artifacts import ArtifactStore
from worker.core.errors import InvalidPayload, PermanentError, TransientError
from worker.core.records import TaskRecords
from worker.core.redis_client import create_redis
from worker.core.result_backend import CourierRedisBackend
from worker.core.settings import Settings
from worker.registry import TaskSpec
from worker.transport.headroom import past_maxmemory

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


# ``json.dumps(result, default=str)`` builds a new encoder per call: one is kept instead.
_SIZE_ENCODER = json.JSONEncoder(default=str)


def check_result_size(result: Any, limit: int) -> None:
    """Results live in Redis next to the queue: an oversized one fails its task instead."""
    size = len(_SIZE_ENCODER.encode(result))
    if size > limit:
        raise PermanentError(
            f"result of {size} bytes exceeds COURIER_MAX_RESULT_BYTES ({limit} bytes)"
        )


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
        lifecycle.begin(self)  # a duplicate or a task revoked while queued stops here
        if args:
            raise InvalidPayload(positional_arguments(spec.name, args))
        try:
            payload = spec.payload.model_validate(kwargs)
        except ValidationError as exc:
            raise InvalidPayload(f"payload of {spec.name!r} is invalid: {exc}") from None
        request = self.request  # a property: Celery's request stack, looked up at each read
        ctx = RunContext(
            str(request.id),
            request.retries,
            settings,
            resources.artifacts,
            resources.records,
            cast(CourierRedisBackend, self.backend),
        )
        try:
            result = spec.func(payload, ctx)
        except retry_on as exc:
            countdown = backoff_seconds(
                request.retries,
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
