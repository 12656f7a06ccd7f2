"""Test-only tasks, bound onto Courier's worker app by ``celery worker --include`` (never
registered in ``worker.registry``: the API and production workers do not know them)."""

from __future__ import annotations

from pydantic import BaseModel

from worker.celery_app import celery_app
from worker.core.errors import TransientError
from worker.core.settings import get_settings
from worker.registry import TaskContext, TaskSpec
from worker.runner import WorkerResources, bind_task

ALWAYS_TRANSIENT_TASK = "test_always_transient"
ALWAYS_TRANSIENT_RETRIES = 2
INCLUDE = "--include=tests.worker.extra_tasks"


class Empty(BaseModel):
    pass


def always_transient(payload: Empty, ctx: TaskContext) -> None:
    raise TransientError(f"attempt {ctx.retries + 1} failed")


bind_task(
    celery_app,
    TaskSpec(
        name=ALWAYS_TRANSIENT_TASK,
        func=always_transient,
        payload=Empty,
        description="Raises TransientError and lists no retry_on.",
        max_retries=ALWAYS_TRANSIENT_RETRIES,
    ),
    WorkerResources(get_settings()),
)
