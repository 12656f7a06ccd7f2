"""/v1/queues/{name}/messages: purge a queue, with every removed task's status kept true."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request

from app.api.deps import SettingsDep
from app.api.errors import PROTECTED_ERRORS, UnknownQueue, error_responses
from app.api.schemas import QueuePurged
from app.api.security import client_identity
from app.purge import QueuePurger
from worker.core import metrics

router = APIRouter(
    prefix="/v1/queues",
    tags=["queues"],
    dependencies=[Depends(client_identity)],
    responses=PROTECTED_ERRORS,
)

QueueName = Annotated[str, Path(max_length=200, description="One of COURIER_QUEUES.")]


async def get_purger(request: Request) -> QueuePurger:
    return request.app.state.purger  # type: ignore[no-any-return]


@router.delete(
    "/{name}/messages",
    summary="Purge the messages waiting in a queue; each removed task reads revoked",
    responses=error_responses(404),
)
async def purge_queue(
    name: QueueName,
    settings: SettingsDep,
    purger: Annotated[QueuePurger, Depends(get_purger)],
) -> QueuePurged:
    if name not in settings.queues:
        raise UnknownQueue(f"unknown queue {name!r}; configured queues: {settings.queues}")
    purged = await purger.purge(name, reason=f"purged through DELETE /v1/queues/{name}/messages")
    metrics.TASKS_PURGED.labels(name).inc(purged.removed)
    return QueuePurged(queue=name, removed=purged.removed, revoked=purged.revoked)
