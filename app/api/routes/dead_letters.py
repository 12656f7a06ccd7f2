"""/v1/dead-letters: messages no worker could run, set aside by the worker's transport.

A dead letter keeps the raw message, why it was set aside and where it came from
(``worker/core/dead_letters.py``). Requeue pushes it back onto its list once whatever was wrong
is fixed (the task deployed, the producer corrected); delete drops it for good.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from app.api.deps import RedisDep
from app.api.errors import PROTECTED_ERRORS, DeadLetterNotFound, NotRequeueable, error_responses
from app.api.schemas import DeadLetterList, DeadLetterOut, DeadLetterRequeued
from app.api.security import client_identity
from worker.core.dead_letters import DeadLetter, DeadLetterCalls

router = APIRouter(
    prefix="/v1/dead-letters",
    tags=["dead letters"],
    dependencies=[Depends(client_identity)],
    responses=PROTECTED_ERRORS,
)

DeadLetterId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="A dead letter's id.")]


async def get_store(request: Request) -> DeadLetterCalls:
    return request.app.state.dead_letters  # type: ignore[no-any-return]


StoreDep = Annotated[DeadLetterCalls, Depends(get_store)]


async def _found(store: DeadLetterCalls, client: RedisDep, letter_id: str) -> DeadLetter:
    letter = await store.get(letter_id).run_async(client)
    if letter is None:
        raise DeadLetterNotFound(f"dead letter {letter_id!r} not found (requeued or deleted?)")
    return letter


@router.get("", summary="List dead letters, newest first")
async def list_dead_letters(
    store: StoreDep,
    client: RedisDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many.")] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000, description="Skip the newest ones.")] = 0,
) -> DeadLetterList:
    total, letters = await store.list(limit, offset).run_async(client)
    return DeadLetterList(
        total=total, dead_letters=[DeadLetterOut(**letter.describe()) for letter in letters]
    )


@router.get("/{letter_id}", summary="One dead letter", responses=error_responses(404))
async def get_dead_letter(
    letter_id: DeadLetterId, store: StoreDep, client: RedisDep
) -> DeadLetterOut:
    letter = await _found(store, client, letter_id)
    return DeadLetterOut(**letter.describe())


@router.post(
    "/{letter_id}/requeue",
    summary="Push a dead letter back onto the queue list it came from",
    responses=error_responses(404, 409),
)
async def requeue_dead_letter(
    letter_id: DeadLetterId, store: StoreDep, client: RedisDep, request: Request
) -> DeadLetterRequeued:
    letter = await _found(store, client, letter_id)
    if not letter.requeueable:
        raise NotRequeueable(
            f"dead letter {letter_id!r} was kept cut to {store.max_bytes} of its {letter.size} "
            "bytes (COURIER_DEAD_LETTER_MAX_BYTES): it cannot be requeued"
        )
    if not await store.requeue(letter).run_async(client):
        raise DeadLetterNotFound(f"dead letter {letter_id!r} not found (requeued or deleted?)")
    base = str(request.base_url).rstrip("/")
    return DeadLetterRequeued(
        id=letter.id,
        queue=letter.queue,
        task_id=letter.task_id,
        status_url=f"{base}/v1/tasks/{letter.task_id}" if letter.task_id else None,
    )


@router.delete(
    "/{letter_id}",
    status_code=204,
    summary="Drop a dead letter for good",
    response_class=Response,
    responses=error_responses(404),
)
async def delete_dead_letter(
    letter_id: DeadLetterId, store: StoreDep, client: RedisDep
) -> Response:
    if not await store.delete(letter_id).run_async(client):
        raise DeadLetterNotFound(f"dead letter {letter_id!r} not found (requeued or deleted?)")
    return Response(status_code=204)
