"""Response bodies of the /v1 API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from app.queue import TaskState
from worker.core.status import TaskStatus


class TaskInfo(BaseModel):
    name: str
    description: str
    max_retries: int
    payload_schema: dict[str, Any] = Field(description="JSON schema of the request body.")


class TaskAccepted(BaseModel):
    id: str
    name: str
    status: TaskStatus = TaskStatus.QUEUED
    status_url: str
    trace_id: str | None = Field(None, description="Trace of this request (tracing on).")


class TaskErrorOut(BaseModel):
    type: str
    message: str


class TaskStatusOut(BaseModel):
    id: str
    name: str
    queue: str
    status: TaskStatus
    result: Any = None
    error: TaskErrorOut | None = None
    retries: int
    executions: int = Field(
        0,
        description="Attempts started: retries + 1, more if a lost worker's task was redelivered.",
    )
    worker: str | None = None
    enqueued_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    trace_id: str | None = Field(None, description="Trace of the submitting request (tracing on).")

    @classmethod
    def from_state(cls, state: TaskState) -> TaskStatusOut:
        error = (
            TaskErrorOut(type=state.error.type, message=state.error.message)
            if state.error
            else None
        )
        return cls(
            id=state.task_id,
            name=state.name,
            queue=state.queue,
            status=state.status,
            result=state.result,
            error=error,
            retries=state.retries,
            executions=state.executions,
            worker=state.worker,
            enqueued_at=state.enqueued_at,
            started_at=state.started_at,
            finished_at=state.finished_at,
            trace_id=state.trace_id,
        )


class ArtifactOut(BaseModel):
    id: str
    filename: str
    content_type: str
    bytes: int
    url: str


class SeedUser(BaseModel):
    id: int
    username: str
    email: str


class UserRegistered(BaseModel):
    """The seed's body (``message``, ``user``) and Courier's earlier flat keys beside it."""

    message: str = "Registration complete"
    user: SeedUser
    user_id: int
    username: str
    email: str


class UserDeleted(BaseModel):
    message: str = Field(examples=["User 1 deleted"])
    user_id: int


class DeadLetterOut(BaseModel):
    id: str
    reason: str = Field(description="envelope, body, headers or unknown_task.")
    detail: str = Field(description="What is wrong with the message.")
    queue: str
    task: str | None = Field(None, description="The task name it carried, if readable.")
    task_id: str | None = Field(None, description="The task id it carried, if readable.")
    dead_lettered_at: datetime
    size: int = Field(description="Bytes of the raw message.")
    truncated: bool = Field(description="Only the first COURIER_DEAD_LETTER_MAX_BYTES are kept.")
    raw: str = Field(description="The message as it was on the queue list.")
    raw_encoding: str = Field(description="utf-8, or base64 when the bytes are not UTF-8.")


class DeadLetterList(BaseModel):
    total: int = Field(description="Dead letters kept (at most COURIER_DEAD_LETTER_MAX).")
    dead_letters: list[DeadLetterOut] = Field(description="Newest first.")


class DeadLetterRequeued(BaseModel):
    id: str
    queue: str
    task_id: str | None
    status_url: str | None = Field(None, description="The task's status, when it has an id.")


class QueuePurged(BaseModel):
    queue: str
    removed: int = Field(description="Messages taken off the queue's lists.")
    revoked: int = Field(
        description="Tasks now reading revoked (the others had finished, or carried no id)."
    )
