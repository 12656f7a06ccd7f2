"""The seed's endpoints, same paths, parameters and response shapes as before.

``/users/*`` do their side work (welcome email, audit entry) as FastAPI BackgroundTasks: losing
one is acceptable. ``/send-email`` goes through the durable queue like ``/v1/tasks/send_email``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, Path, Query
from pydantic import EmailStr

from app.api.deps import QueueDep, RedisDep, SettingsDep, UsersDep
from app.api.errors import PROTECTED_ERRORS, error_responses
from app.api.schemas import SeedUser, UserDeleted, UserRegistered
from app.api.security import SubmitterDep, client_identity
from app.background import send_welcome_email, write_audit_log
from app.queue import EnqueueOptions
from worker.core.names import SEND_EMAIL_TASK
from worker.core.status import TaskStatus
from worker.tasks.email import SendEmailPayload

router = APIRouter(
    tags=["seed"], dependencies=[Depends(client_identity)], responses=PROTECTED_ERRORS
)

Username = Annotated[str, Query(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


@router.post(
    "/users/register",
    summary="Register a user (usernames unique whatever their case); welcome email and audit "
    "in background",
    responses=error_responses(409),
)
async def register_user(
    username: Username,
    email: Annotated[EmailStr, Query()],
    background: BackgroundTasks,
    users: UsersDep,
    client: RedisDep,
    settings: SettingsDep,
) -> UserRegistered:
    user = await users.register(username, str(email))
    background.add_task(send_welcome_email, settings, user.username, user.email)
    background.add_task(write_audit_log, client, "user.registered", user_id=user.user_id)
    return UserRegistered(
        user=SeedUser(id=user.user_id, username=user.username, email=user.email),
        user_id=user.user_id,
        username=user.username,
        email=user.email,
    )


@router.delete(
    "/users/{user_id}",
    summary="Delete a user; audit entry in background",
    responses=error_responses(404),
)
async def delete_user(
    user_id: Annotated[int, Path(ge=1)],
    background: BackgroundTasks,
    users: UsersDep,
    client: RedisDep,
) -> UserDeleted:
    user = await users.delete(user_id)
    background.add_task(write_audit_log, client, "user.deleted", user_id=user.user_id)
    return UserDeleted(message=f"User {user.user_id} deleted", user_id=user.user_id)


@router.post(
    "/send-email",
    summary="Queue an email (seed form of POST /v1/tasks/send_email)",
    responses=error_responses(429),
)
async def send_email(
    to: Annotated[EmailStr, Query()],
    subject: Annotated[str, Query(min_length=1, max_length=998)],
    body: Annotated[str, Query(max_length=100_000)],
    queue: QueueDep,
    _: SubmitterDep,
) -> dict[str, str]:
    payload = SendEmailPayload(to=to, subject=subject, body=body).model_dump(mode="json")
    task_id = await queue.enqueue(SEND_EMAIL_TASK, payload, EnqueueOptions())
    return {"task_id": task_id, "status": TaskStatus.QUEUED.value}


@router.get(
    "/tasks/{task_id}",
    summary="Seed status: Celery state names, result when ready",
    responses=error_responses(404),
)
async def task_status(
    task_id: Annotated[str, Path(max_length=64)], queue: QueueDep
) -> dict[str, Any]:
    state = await queue.state(task_id)
    result: Any = state.result
    if state.error is not None:
        result = f"{state.error.type}: {state.error.message}"
    return {"task_id": task_id, "status": state.celery_state, "result": result}
