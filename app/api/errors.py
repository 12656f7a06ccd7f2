"""Domain exceptions -> JSON responses, registered in one place.

Every error body is ``{"detail": ...}`` like FastAPI's own, so clients parse one shape.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError
from pydantic import BaseModel

from app.api.security import Forbidden, RateLimited, Unauthenticated
from app.atomic_write import NotReplicated
from app.idempotency import IdempotencyConflict, IdempotencyKeyInvalid
from app.memory_watermark import RedisFull
from app.queue import EnqueueFailed, TaskAlreadyFinished, TaskNotFound
from app.users import UsernameTaken, UserNotFound
from worker.core.artifacts import ArtifactNotFound
from worker.core.redis_client import REDIS_ERRORS, REFUSALS, refusal_code

logger = logging.getLogger("courier.api")


class ErrorOut(BaseModel):
    """Every error body: a message, or a list of field errors like FastAPI's 422."""

    detail: str | list[dict[str, Any]]


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a router or route can answer."""
    return {code: {"model": ErrorOut, "description": ERROR_DESCRIPTIONS[code]} for code in codes}


ERROR_DESCRIPTIONS = {
    401: "No API key",
    403: "Wrong API key",
    404: "Not found (never issued, or expired)",
    409: "Conflict with the current state",
    413: "Body over the configured limit",
    415: "Body not sent as JSON (Content-Type: application/json or application/*+json)",
    429: "Submit rate limit exceeded (see Retry-After)",
    503: "Redis unavailable, full or refusing writes (see Retry-After); the message says "
    "whether a submit may have been stored",
}
# Every protected router can answer these.
PROTECTED_ERRORS = error_responses(401, 403, 503)


class UnknownTask(LookupError):
    pass


class InvalidOption(ValueError):
    """A query option that is well-typed but not acceptable (unknown queue, ETA too far)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class DeadLetterNotFound(LookupError):
    pass


class UnknownQueue(LookupError):
    pass


class NotRequeueable(ValueError):
    pass


class PayloadTooLarge(ValueError):
    pass


class PayloadTooDeep(ValueError):
    pass


class UnsupportedMediaType(ValueError):
    """A body FastAPI would not read as JSON: a form, text/plain, or no Content-Type."""


def _json(status: int, detail: object) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail})


# Seconds a client should wait: Redis coming back is a matter of a second; a full Redis needs
# its workers to drain some of the queue first.
RETRY_AFTER_UNAVAILABLE = 1
RETRY_AFTER_FULL = 5
READS = frozenset({"GET", "HEAD", "OPTIONS"})
MAY_BE_STORED = (
    "the task may have been stored. Retry with the same Idempotency-Key: a stored task is then "
    "answered, not submitted twice"
)
NO_KEY_SENT = (
    " (this request had none, so a plain retry may run the task twice: send an "
    "Idempotency-Key with every submit)"
)


def _unavailable(detail: str, retry_after: int) -> JSONResponse:
    response = _json(503, detail)
    response.headers["Retry-After"] = str(retry_after)
    return response


def _cause(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


async def _redis_unavailable(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("redis unavailable", extra={"path": request.url.path, "error": str(exc)})
    detail = f"Redis is unavailable: {_cause(exc)}"
    if isinstance(exc, redis.TimeoutError) and request.method not in READS:
        detail += "; the change may have been applied before Redis stopped answering"
    return _unavailable(detail, RETRY_AFTER_UNAVAILABLE)


async def _redis_refused(request: Request, exc: Exception) -> JSONResponse:
    """A refusal (``REFUSALS``) is a 503: nothing was written. Any other error reply is a
    bug of ours, answered 500 in JSON like every error (never a dropped connection)."""
    code = refusal_code(exc)
    if code is None:
        logger.error("redis error reply", exc_info=exc, extra={"path": request.url.path})
        return _json(500, f"Internal error: Redis answered {_cause(exc)}")
    logger.warning("redis refused", extra={"path": request.url.path, "error": str(exc)})
    retry_after = RETRY_AFTER_FULL if code == "OOM" else RETRY_AFTER_UNAVAILABLE
    detail = f"{REFUSALS[code]}: the refused write was not applied ({_cause(exc)})"
    return _unavailable(detail, retry_after)


async def _redis_full(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("redis above its memory watermark", extra={"path": request.url.path})
    return _unavailable(f"{exc}; the task was not stored", RETRY_AFTER_FULL)


async def _enqueue_failed(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, EnqueueFailed)
    cause = exc.cause
    logger.warning(
        "submit failed",
        extra={"path": request.url.path, "error": _cause(cause), "stored": exc.stored},
    )
    code = refusal_code(cause)
    if code is not None:
        retry_after = RETRY_AFTER_FULL if code == "OOM" else RETRY_AFTER_UNAVAILABLE
        return _unavailable(f"{REFUSALS[code]}: the task was not stored", retry_after)
    if exc.stored is False:
        return _unavailable(
            f"Redis is unavailable ({_cause(cause)}): the task was not stored",
            RETRY_AFTER_UNAVAILABLE,
        )
    if isinstance(cause, NotReplicated):
        detail = f"Redis stored the write, but no replica confirmed it ({cause}): {MAY_BE_STORED}"
    else:
        detail = f"Redis did not answer in time ({_cause(cause)}): {MAY_BE_STORED}"
    if "idempotency-key" not in request.headers:
        detail += NO_KEY_SENT
    return _unavailable(detail, RETRY_AFTER_UNAVAILABLE)


async def _not_found(_: Request, exc: Exception) -> JSONResponse:
    return _json(404, str(exc))


async def _conflict(_: Request, exc: Exception) -> JSONResponse:
    return _json(409, str(exc))


async def _unauthenticated(_: Request, exc: Exception) -> JSONResponse:
    response = _json(401, str(exc))
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


async def _forbidden(_: Request, exc: Exception) -> JSONResponse:
    return _json(403, str(exc))


async def _rate_limited(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RateLimited)
    response = _json(429, str(exc))
    response.headers["Retry-After"] = str(max(1, round(exc.retry_after + 0.5)))
    return response


async def _too_large(_: Request, exc: Exception) -> JSONResponse:
    return _json(413, str(exc))


async def _unsupported_media_type(_: Request, exc: Exception) -> JSONResponse:
    return _json(415, str(exc))


async def _bad_idempotency_key(_: Request, exc: Exception) -> JSONResponse:
    detail = [{"type": "value_error", "loc": ["header", "Idempotency-Key"], "msg": str(exc)}]
    return _json(422, detail)


async def _too_deep(_: Request, exc: Exception) -> JSONResponse:
    return _json(422, [{"type": "value_error", "loc": ["body"], "msg": str(exc)}])


async def _invalid_option(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidOption)
    detail = [{"type": "value_error", "loc": ["query", exc.field], "msg": str(exc)}]
    return _json(422, detail)


def register_error_handlers(app: FastAPI) -> None:
    for error in (*REDIS_ERRORS, OperationalError):
        app.add_exception_handler(error, _redis_unavailable)
    app.add_exception_handler(redis.ResponseError, _redis_refused)
    app.add_exception_handler(RedisFull, _redis_full)
    app.add_exception_handler(EnqueueFailed, _enqueue_failed)
    not_found = (TaskNotFound, UnknownTask, UnknownQueue, UserNotFound, ArtifactNotFound)
    for error in (*not_found, DeadLetterNotFound):
        app.add_exception_handler(error, _not_found)
    for error in (TaskAlreadyFinished, UsernameTaken, IdempotencyConflict, NotRequeueable):
        app.add_exception_handler(error, _conflict)
    app.add_exception_handler(InvalidOption, _invalid_option)
    app.add_exception_handler(PayloadTooLarge, _too_large)
    app.add_exception_handler(PayloadTooDeep, _too_deep)
    app.add_exception_handler(UnsupportedMediaType, _unsupported_media_type)
    app.add_exception_handler(IdempotencyKeyInvalid, _bad_idempotency_key)
    app.add_exception_handler(Unauthenticated, _unauthenticated)
    app.add_exception_handler(Forbidden, _forbidden)
    app.add_exception_handler(RateLimited, _rate_limited)
