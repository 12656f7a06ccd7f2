"""The producer side: enqueue a registered task, look up its status, cancel it.

Enqueue writes the task's record and its message in one atomic step (see ``app.messages``):
one script call (``app.atomic_write``) from the event loop, so a 202 is only
returned for a task whose message Redis accepted, and a failed write leaves neither behind; the
caller gets ``EnqueueFailed`` (mapped to 503), which says whether the task was stored: not when
Redis refused the write or could not be reached, perhaps when it did not answer after the write
was sent, or (with Sentinel) when fewer replicas than asked acknowledged it in time. A caller
may add its own writes to that step, on a condition (a ``Guard``: the idempotency key's claim).
Above the memory high watermark nothing is written at all (``RedisFull``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import redis
from celery import Celery, states
from celery.backends.base import BaseKeyValueStoreBackend
from kombu.exceptions import OperationalError
from redis.asyncio import Redis as AsyncRedis
from starlette.concurrency import run_in_threadpool

from app.atomic_write import (
    NO_WAIT,
    Condition,
    ConditionFailed,
    Replication,
    Written,
    write_all,
)
from app.failover_audit import AcceptedJournal
from app.kept_connections import NotReached
from app.memory_watermark import MemoryWatermark
from app.messages import MessageBuilder, PreparedMessage
from app.uuid4 import uuid4_text
from worker.core.records import RecordCalls, TaskRecord
from worker.core.redis_client import REDIS_ERRORS, Command, refusal_code
from worker.core.status import TaskStatus, from_celery_state
from worker.core.tracing.setup import current_trace_ids

logger = logging.getLogger("courier.queue")
# Opening kombu's channel (it pings Redis) failed: nothing was written.
CHANNEL_ERRORS: tuple[type[Exception], ...] = (OperationalError, *REDIS_ERRORS)


def new_task_id() -> str:
    """A random uuid4 in its usual form, as Celery makes task ids."""
    return uuid4_text()


class TaskNotFound(LookupError):
    """No task with this id was issued, or its record expired with its result."""


class TaskAlreadyFinished(Exception):
    def __init__(self, state: TaskState) -> None:
        super().__init__(f"task {state.task_id} already finished with status {state.status}")
        self.state = state


class EnqueueFailed(Exception):
    """The task's write failed. ``stored`` is False when it certainly did not happen (Redis
    refused it, or was not reached), None when Redis may have run it (no answer after sending)."""

    def __init__(self, cause: Exception, stored: bool | None) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause
        self.stored = stored


def _failed_write(exc: Exception) -> EnqueueFailed:
    """A failure of the write itself (EXEC sent): unknown, unless Redis refused it."""
    return EnqueueFailed(exc, stored=False if refusal_code(exc) else None)


@contextlib.contextmanager
def _enqueue_errors() -> Iterator[None]:
    """The write's failures as ``EnqueueFailed``: not stored when Redis was not reached, else
    unknown unless Redis refused it; a guard's condition that did not hold as ``GuardFailed``
    (only a guarded write has a condition)."""
    try:
        yield
    except ConditionFailed as exc:
        raise GuardFailed() from exc
    except NotReached as exc:
        raise EnqueueFailed(exc.cause, stored=False) from exc.cause
    except redis.RedisError as exc:
        raise _failed_write(exc) from exc


class GuardFailed(Exception):
    """The guarded key no longer held the expected value: nothing was written."""


@dataclass(frozen=True)
class Guard:
    """Enqueue only while ``key`` holds ``expected`` (checked in the write's script), and write
    ``also`` in the same atomic step as the task: both or neither."""

    key: str
    expected: bytes
    also: tuple[Command, ...] = ()


def _guarded(commands: list[Command], guard: Guard | None) -> Condition | None:
    """The write's condition, with the guard's own writes added to ``commands``."""
    if guard is None:
        return None
    commands += guard.also
    return Condition(guard.key, guard.expected)


@dataclass(frozen=True)
class EnqueueOptions:
    countdown: float | None = None
    eta: datetime | None = None
    priority: int | None = None
    queue: str | None = None


@dataclass(frozen=True)
class TaskError:
    type: str
    message: str


@dataclass(frozen=True)
class TaskState:
    task_id: str
    name: str
    queue: str
    status: TaskStatus
    celery_state: str
    result: Any
    error: TaskError | None
    retries: int
    worker: str | None
    enqueued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    trace_id: str | None = None
    executions: int = 0


def _timestamp(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value else None


def _error_of(meta: dict[str, Any]) -> TaskError | None:
    result = meta.get("result")
    if meta["status"] not in states.EXCEPTION_STATES or not isinstance(result, dict):
        return None
    message = result.get("exc_message", "")
    if isinstance(message, list | tuple):
        message = " ".join(str(part) for part in message)
    return TaskError(type=str(result.get("exc_type", "Error")), message=str(message))


class TaskQueue:
    def __init__(
        self,
        celery: Celery,
        records: RecordCalls,
        default_queue: str,
        aredis: AsyncRedis,
        watermark: MemoryWatermark | None = None,
        replication: Replication = NO_WAIT,
        journal: AcceptedJournal | None = None,
    ) -> None:
        """``replication``: the replicas a submit waits for (Sentinel mode); ``journal``: where
        accepted submits are kept for ``app.failover_audit`` to check after a failover."""
        self._celery = celery
        self._watermark = watermark
        self._records = records
        self._default_queue = default_queue
        self._aredis = aredis
        self._messages = MessageBuilder(celery)
        self._replication = replication
        self._journal = journal

    def _prepare(
        self, name: str, payload: dict[str, Any], options: EnqueueOptions, task_id: str | None
    ) -> tuple[PreparedMessage, list[Command]]:
        """The task's message and its record, as one list of writes for a single MULTI."""
        task_id = task_id or new_task_id()
        queue = options.queue or self._default_queue
        ids = current_trace_ids()
        message = self._messages.build(
            name,
            payload,
            task_id,
            queue,
            countdown=options.countdown,
            eta=options.eta,
            priority=options.priority,
        )
        record = self._records.create_commands(task_id, name, queue, ids[0] if ids else None)
        return message, [*record, *message.commands]

    async def enqueue(
        self,
        name: str,
        payload: dict[str, Any],
        options: EnqueueOptions,
        task_id: str | None = None,
        guard: Guard | None = None,
    ) -> str:
        """Record and message in one round trip from the event loop: no worker thread, and one
        script call rather than a MULTI/EXEC (``app.atomic_write`` says why).

        With a ``guard``: ``GuardFailed`` when its key changed, and nothing is written."""
        if self._watermark is not None:
            self._watermark.check()
        if not self._messages.ready:
            # kombu's channel pings Redis when it opens: once, and off the loop.
            await run_in_threadpool(self._open_channel)
        message, commands = self._prepare(name, payload, options, task_id)
        condition = _guarded(commands, guard)
        # The producer span (open from before_task_publish to after_task_publish) is this
        # write, and no Redis client span says it again: app.atomic_write talks to its
        # connection directly, below the client methods the Redis instrumentation wraps
        # (tests/observability/test_tracing.py checks), so nothing needs suppressing here.
        with _enqueue_errors():
            written = await write_all(self._aredis, commands, condition, self._replication)
        return self._accepted(message, commands, written)

    def _open_channel(self) -> None:
        try:
            self._messages.connect()
        except CHANNEL_ERRORS as exc:
            raise EnqueueFailed(exc, stored=False) from exc

    def close(self) -> None:
        self._messages.close()

    def _accepted(self, message: PreparedMessage, commands: list[Command], written: Written) -> str:
        """Kept for the failover audit (Sentinel mode), then published."""
        if self._journal is not None:
            self._journal.add(written.address, commands)
        return self._published(message)

    @staticmethod
    def _published(message: PreparedMessage) -> str:
        message.published()
        # DEBUG: one line per submission is the API's hottest path (its fields not even built
        # unless DEBUG is on).
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "task enqueued",
                extra={
                    "task_id": message.task_id, "task": message.name,
                    "queue": message.routing_key,
                },
            )  # fmt: skip
        return message.task_id

    async def state(self, task_id: str) -> TaskState:
        record, raw = await self._records.get_with_result(task_id).run_async(self._aredis)
        if record is None:
            raise TaskNotFound(f"no task with id {task_id!r} (never issued, or expired)")
        # The raw stored meta: Celery would otherwise re-create exception classes by import.
        backend = cast(BaseKeyValueStoreBackend, self._celery.backend)
        meta = cast(dict[str, Any], backend.decode(raw)) if raw else None
        return self._combine(record, meta)

    @staticmethod
    def _combine(record: TaskRecord, meta: dict[str, Any] | None) -> TaskState:
        celery_state = meta["status"] if meta else states.PENDING
        status = from_celery_state(celery_state)
        if record.revoked and status is TaskStatus.QUEUED:
            status, celery_state = TaskStatus.REVOKED, states.REVOKED
        meta = meta or {}
        finished_at = None
        if status.finished and meta.get("date_done"):
            finished_at = datetime.fromisoformat(meta["date_done"]).replace(tzinfo=UTC)
        running = meta.get("result") if celery_state == states.STARTED else None
        worker = meta.get("worker") or (
            running.get("hostname") if isinstance(running, dict) else None
        )
        return TaskState(
            task_id=record.task_id,
            name=record.name,
            queue=record.queue,
            status=status,
            celery_state=celery_state,
            result=meta.get("result") if status is TaskStatus.SUCCEEDED else None,
            error=_error_of(meta) if meta else None,
            retries=int(meta.get("retries") or 0),
            worker=worker,
            enqueued_at=_timestamp(record.enqueued_at) or datetime.now(UTC),
            started_at=_timestamp(record.started_at),
            finished_at=finished_at,
            trace_id=record.trace_id,
            executions=record.executions,
        )

    async def cancel(self, task_id: str, terminate: bool) -> TaskState:
        """Revoke a queued or running task; a running one is only stopped when ``terminate``."""
        current = await self.state(task_id)
        if current.status.finished:
            raise TaskAlreadyFinished(current)
        await self._records.mark_revoked(task_id).run_async(self._aredis)
        stop = current.status in (TaskStatus.QUEUED, TaskStatus.RETRYING) or terminate
        await run_in_threadpool(self._revoke, task_id, terminate, stop)
        return await self.state(task_id)

    def _revoke(self, task_id: str, terminate: bool, store_revoked: bool) -> None:
        """Celery's broadcast and, for a task that will not run on, its REVOKED state: Celery's
        own blocking calls, the one part of the API that runs in a thread."""
        self._celery.control.revoke(task_id, terminate=terminate, signal="SIGTERM")
        if store_revoked:
            self._celery.backend.mark_as_revoked(task_id, reason="revoked through the API")
