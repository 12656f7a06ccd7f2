"""The task registry: a task is a plain function plus a pydantic payload model.

Registering does not touch Celery, so the API can import every task module to learn names and
payload schemas (for validation and ``GET /v1/tasks``) without building or running task code.
``worker.celery_app`` turns each registered spec into a Celery task.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from worker.core.artifacts import ArtifactStore
from worker.core.records import TaskRecords
from worker.core.result_backend import CourierRedisBackend
from worker.core.settings import Settings


class TaskContext(Protocol):
    """What a task function may use besides its payload; built by the runner per attempt."""

    @property
    def task_id(self) -> str: ...
    @property
    def retries(self) -> int: ...
    @property
    def settings(self) -> Settings: ...
    @property
    def artifacts(self) -> ArtifactStore: ...
    # Every task's record and Celery's result backend: for maintenance tasks (reconcile).
    @property
    def records(self) -> TaskRecords: ...
    @property
    def backend(self) -> CourierRedisBackend: ...


P = TypeVar("P", bound=BaseModel)
TaskFunc = Callable[[Any, TaskContext], Any]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    func: TaskFunc
    payload: type[BaseModel]
    description: str
    max_retries: int = 0
    # Retried besides TransientError, which every task retries (up to ``max_retries``).
    retry_on: tuple[type[Exception], ...] = ()


_REGISTRY: dict[str, TaskSpec] = {}


def task(
    *,
    name: str,
    payload: type[P],
    max_retries: int = 0,
    retry_on: tuple[type[Exception], ...] = (),
) -> Callable[[Callable[[P, TaskContext], Any]], Callable[[P, TaskContext], Any]]:
    """Register ``func(payload, ctx)`` as task ``name``; returns the function unchanged."""

    def register(func: Callable[[P, TaskContext], Any]) -> Callable[[P, TaskContext], Any]:
        if name in _REGISTRY and _REGISTRY[name].func is not func:
            raise ValueError(f"task {name!r} is registered twice")
        _REGISTRY[name] = TaskSpec(
            name=name,
            func=func,
            payload=payload,
            description=(func.__doc__ or "").strip(),
            max_retries=max_retries,
            retry_on=retry_on,
        )
        return func

    return register


def registered_tasks() -> Mapping[str, TaskSpec]:
    """Every task, after importing each module of ``worker.tasks`` (a new task = a new module)."""
    import worker.tasks as package

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
    return dict(_REGISTRY)
