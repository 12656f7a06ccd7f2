"""Test-only tasks, bound onto a worker's app by ``tests.worker.extra_worker`` (never
registered in ``worker.registry``: the API and production workers do not know them)."""

from __future__ import annotations

import signal
import time

from celery import Celery
from pydantic import BaseModel

from worker.core.errors import TransientError
from worker.core.settings import Settings
from worker.registry import TaskContext, TaskSpec
from worker.runner import WorkerResources, bind_task

ALWAYS_TRANSIENT_TASK = "test_always_transient"
ALWAYS_TRANSIENT_RETRIES = 2
# A handler with a bug: an exception Courier never raises itself, so no per-exception series.
RAISES_VALUE_ERROR_TASK = "test_raises_value_error"
# Sleeps in a loop that swallows every Exception (the soft limit's too).
SWALLOWS_EXCEPTIONS_TASK = "test_swallows_exceptions"
# Blocks the signal the inline pool interrupts with, then sleeps: a task that never comes back
# to the pool (as C code that masks signals around a blocking call).
BLOCKS_INTERRUPTS_TASK = "test_blocks_interrupts"
# The worker option that loads them.
INCLUDE = "--include=tests.worker.extra_worker"


class Empty(BaseModel):
    pass


def always_transient(payload: Empty, ctx: TaskContext) -> None:
    raise TransientError(f"attempt {ctx.retries + 1} failed")


def raises_value_error(payload: Empty, ctx: TaskContext) -> None:
    raise ValueError("a bug in the handler")


class Seconds(BaseModel):
    seconds: float


def swallows_exceptions(payload: Seconds, ctx: TaskContext) -> int:
    swallowed, end = 0, time.monotonic() + payload.seconds
    while time.monotonic() < end:
        try:
            time.sleep(0.05)
        except Exception:
            swallowed += 1
    return swallowed


def blocks_interrupts(payload: Seconds, ctx: TaskContext) -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(payload.seconds)


def bind_extra_tasks(app: Celery, settings: Settings) -> None:
    resources = WorkerResources(settings)
    for spec in (
        TaskSpec(
            name=ALWAYS_TRANSIENT_TASK,
            func=always_transient,
            payload=Empty,
            description="Raises TransientError and lists no retry_on.",
            max_retries=ALWAYS_TRANSIENT_RETRIES,
        ),
        TaskSpec(
            name=RAISES_VALUE_ERROR_TASK,
            func=raises_value_error,
            payload=Empty,
            description="Raises ValueError, an exception Courier does not raise itself.",
        ),
        TaskSpec(
            name=SWALLOWS_EXCEPTIONS_TASK,
            func=swallows_exceptions,
            payload=Seconds,
            description="Sleeps, catching every Exception, for the given seconds.",
        ),
        TaskSpec(
            name=BLOCKS_INTERRUPTS_TASK,
            func=blocks_interrupts,
            payload=Seconds,
            description="Blocks SIGALRM, then sleeps for the given seconds.",
        ),
    ):
        bind_task(app, spec, resources)
