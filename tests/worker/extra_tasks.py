"""Test-only tasks, bound onto a worker's app by ``tests.worker.extra_worker`` (never
registered in ``worker.registry``: the API and production workers do not know them)."""

from __future__ import annotations

from celery import Celery
from pydantic import BaseModel

from worker.core.errors import TransientError
from worker.core.settings import Settings
from worker.registry import TaskContext, TaskSpec
from worker.runner import WorkerResources, bind_task

ALWAYS_TRANSIENT_TASK = "test_always_transient"
ALWAYS_TRANSIENT_RETRIES = 2
# The worker option that loads them.
INCLUDE = "--include=tests.worker.extra_worker"


class Empty(BaseModel):
    pass


def always_transient(payload: Empty, ctx: TaskContext) -> None:
    raise TransientError(f"attempt {ctx.retries + 1} failed")


def bind_extra_tasks(app: Celery, settings: Settings) -> None:
    spec = TaskSpec(
        name=ALWAYS_TRANSIENT_TASK,
        func=always_transient,
        payload=Empty,
        description="Raises TransientError and lists no retry_on.",
        max_retries=ALWAYS_TRANSIENT_RETRIES,
    )
    bind_task(app, spec, WorkerResources(settings))
