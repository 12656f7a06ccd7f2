"""/v1/tasks: list tasks, submit (validate -> enqueue -> 202), status, cancel.

One submit route per registered task, each typed with the task's payload model, so FastAPI
validates the body (422 listing the fields) and the OpenAPI document shows every payload.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response
from pydantic import BaseModel, TypeAdapter

from app.api.deps import QueueDep
from app.api.errors import (
    PROTECTED_ERRORS,
    InvalidOption,
    PayloadTooDeep,
    UnknownTask,
    error_responses,
)
from app.api.fast_submit import FastSubmitRoute, PrebuiltResponse
from app.api.json_body import require_json_body
from app.api.schemas import TaskAccepted, TaskInfo, TaskStatusOut
from app.api.security import SubmitterDep, client_identity
from app.idempotency import MAX_KEY_LENGTH, request_fingerprint
from app.middleware.tracing import set_trace_headers, trace_ids
from app.queue import EnqueueOptions, TaskQueue
from worker.core.settings import Settings
from worker.core.status import TaskStatus
from worker.registry import TaskSpec

PREFIX = "/v1/tasks"


def task_url(request: Request, task_id: str) -> str:
    """``request.url_for("get_task", ...)``, which is a visible share of a submit's CPU: it
    searches the routes by name for a path that is fixed. The base URL is remembered per
    scheme, server address, root path and ``Host`` header (what Starlette builds it from)."""
    scope = request.scope
    server = scope.get("server")
    host = None
    for name, value in scope["headers"]:
        if name == b"host":  # the first one, as Starlette reads it
            host = value
            break
    root_path = scope.get("app_root_path", scope.get("root_path", ""))
    key = (scope.get("scheme", "http"), server, root_path, host)
    cacheable = server is None or type(server) is tuple  # a list would not be a dict key
    base = _BASE_URLS.get(key) if cacheable else None
    if base is None:
        base = str(request.base_url).rstrip("/")
        if cacheable and len(_BASE_URLS) < _BASE_URLS_KEPT:
            _BASE_URLS[key] = base
    return f"{base}{PREFIX}/{task_id}"


# Base URLs by what they are made of: a few per deployment (one per Host a client uses);
# bounded, since the Host header is the client's to choose.
_BASE_URLS: dict[tuple[Any, ...], str] = {}
_BASE_URLS_KEPT = 64


TaskId = Annotated[str, Path(max_length=64, description="Task id returned on submission.")]


async def enqueue_options(
    request: Request,
    countdown: Annotated[
        float | None,
        Query(
            ge=0,
            allow_inf_nan=False,
            description="Delay in seconds, at most the broker visibility timeout.",
        ),
    ] = None,
    eta: Annotated[datetime | None, Query(description="Run at (ISO 8601; UTC if naive).")] = None,
    priority: Annotated[int | None, Query(ge=0, le=9, description="0 is the highest.")] = None,
    queue: Annotated[str | None, Query(description="One of the configured queues.")] = None,
) -> EnqueueOptions:
    settings: Settings = request.app.state.settings  # not SettingsDep: one dependency fewer
    if queue is not None and queue not in settings.queues:
        raise InvalidOption(
            "queue", f"unknown queue {_clipped(queue)}; configured: {settings.queues}"
        )
    if countdown is not None and eta is not None:
        raise InvalidOption("eta", "give either countdown or eta, not both")
    if eta is not None and eta.tzinfo is None:
        eta = eta.replace(tzinfo=UTC)
    _check_delay(settings, countdown, eta)
    return EnqueueOptions(countdown=countdown, eta=eta, priority=priority, queue=queue)


# What enqueue_options gives a request without a query string (the fast path's): no check
# applies, so no need to run it; immutable, so one for every such submit.
NO_OPTIONS = EnqueueOptions()


def _clipped(value: str, limit: int = 40) -> str:
    """A client's value quoted in a message, cut short: messages stay one readable line."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + "..."


def _check_delay(settings: Settings, countdown: float | None, eta: datetime | None) -> None:
    """A delayed message sits unacknowledged in a worker; past the visibility timeout kombu
    would redeliver it to a second worker, so such delays are refused rather than duplicated.

    The message names the bound, not the delay: ``countdown=1e308`` printed in full is 309
    digits."""
    timeout = settings.broker_visibility_timeout
    # Seconds, compared as floats: a timedelta overflows on huge values.
    if countdown is not None and countdown > timeout:
        raise InvalidOption(
            "countdown", f"countdown must be at most the broker visibility timeout ({timeout} s)"
        )
    if eta is not None and (eta - datetime.now(UTC)).total_seconds() > timeout:
        raise InvalidOption(
            "eta", f"eta must be at most the broker visibility timeout ({timeout} s) ahead"
        )


OptionsDep = Annotated[EnqueueOptions, Depends(enqueue_options)]
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=MAX_KEY_LENGTH,
        description="Same key and body within 24 h: the original task id, nothing enqueued.",
    ),
]


def json_depth(value: object) -> int:
    """Nesting depth of a JSON value (a scalar is 0), without recursion: one level at a time,
    so a submit's small payload costs a few list extensions rather than a tuple per value."""
    depth, level = 0, [value]
    while True:
        below: list[object] = []
        for item in level:
            if isinstance(item, dict):
                below.extend(item.values())
            elif isinstance(item, list):
                below.extend(item)
        if not below:
            return depth
        depth, level = depth + 1, below


def check_depth(payload: dict[str, Any], limit: int) -> None:
    depth = json_depth(payload)
    if depth > limit:
        raise PayloadTooDeep(f"payload nests {depth} levels deep; the limit is {limit}")


async def accept(
    request: Request,
    response: Response,
    spec: TaskSpec,
    payload: BaseModel | None,
    options: EnqueueOptions,
    client: str,
    idempotency_key: str | None,
) -> TaskAccepted:
    """The submit once FastAPI has read, authenticated, rate-limited and validated the
    request: enqueue, then the 202's body and headers (``response`` carries the headers, as
    FastAPI's sub-response does)."""
    task_id, replayed = await enqueued(request, spec, payload, options, client, idempotency_key)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return accepted(request, response, spec.name, task_id)


async def enqueued(
    request: Request,
    spec: TaskSpec,
    payload: BaseModel | None,
    options: EnqueueOptions,
    client: str,
    idempotency_key: str | None,
) -> tuple[str, bool]:
    """The submit's work (``accept``'s, and ``app.api.fast_submit``'s): the task id, and
    whether it was an idempotent replay rather than a new task."""
    # Queue and settings straight from app.state rather than QueueDep and SettingsDep:
    # FastAPI solves every dependency of every request anew, a visible share of a submit.
    state = request.app.state
    queue: TaskQueue = state.queue
    settings: Settings = state.settings
    data = (payload or spec.payload()).model_dump(mode="json")
    check_depth(data, settings.max_payload_depth)
    if idempotency_key is None:
        return await queue.enqueue(spec.name, data, options), False
    fingerprint = request_fingerprint(spec.name, data, asdict(options))
    submission = await state.idempotency.submit(
        client,
        idempotency_key,
        fingerprint,
        lambda task_id, guard: queue.enqueue(spec.name, data, options, task_id, guard),
    )
    return submission.task_id, submission.replayed


def accepted(request: Request, response: Response, name: str, task_id: str) -> TaskAccepted:
    """The 202's body, its ``Location`` and trace headers set on ``response``."""
    url = task_url(request, task_id)
    response.headers["Location"] = url
    trace_id = set_trace_headers(response)
    return TaskAccepted(id=task_id, name=name, status_url=url, trace_id=trace_id)


def accepted_reply(request: Request, name: str, task_id: str) -> Response | None:
    """``accepted``'s 202 as FastAPI sends it (its body serialised from ``TaskAccepted``, then
    ``content-length``, ``content-type``, ``Location`` and the trace headers), made from a
    template: the model, its serialisation and two ``Response`` objects were ~4 % of a submit's
    instructions. None when a value would need escaping in JSON (a ``Host`` header with quotes,
    backslashes or characters outside printable ASCII: ``accepted`` answers those).
    ``tests/api/test_fast_submit.py`` compares both, byte for byte."""
    url = task_url(request, task_id)
    if not (url.isascii() and url.isprintable()) or '"' in url or "\\" in url:
        return None
    ids = trace_ids()
    body = _ACCEPTED_JSON % (
        task_id.encode(), _json_name(name), url.encode(),
        b"null" if ids is None else b'"%s"' % ids[0].encode(),
    )  # fmt: skip
    headers = [
        (b"content-length", b"%d" % len(body)),
        (b"content-type", b"application/json"),
        (b"location", url.encode("latin-1")),
    ]
    if ids is not None:
        headers += [(b"x-trace-id", ids[0].encode()), (b"traceparent", ids[1].encode())]
    return PrebuiltResponse(202, body, headers)


# TaskAccepted as pydantic serialises it: compact, fields in order, the status's value.
_ACCEPTED_JSON = (
    b'{"id":"%s","name":%s,"status":"' + TaskStatus.QUEUED.value.encode()
    + b'","status_url":"%s","trace_id":%s}'
)  # fmt: skip


@functools.lru_cache(maxsize=256)  # task names come from the registry
def _json_name(name: str) -> bytes:
    return TypeAdapter(str).dump_json(name)


def _submit_endpoint(spec: TaskSpec) -> Callable[..., Any]:
    model = spec.payload
    optional = not any(field.is_required() for field in model.model_fields.values())

    async def submit(
        request: Request,
        response: Response,
        options: OptionsDep,
        client: SubmitterDep,
        idempotency_key: IdempotencyKeyHeader = None,
        payload: BaseModel | None = None,
    ) -> TaskAccepted:
        return await accept(request, response, spec, payload, options, client, idempotency_key)

    # Type the body with this task's model (an empty body is fine when no field is required).
    signature = inspect.signature(submit)
    body = inspect.Parameter(
        "payload",
        inspect.Parameter.KEYWORD_ONLY,
        annotation=Annotated[
            model | None if optional else model, Body(description=spec.description)
        ],
        default=None if optional else inspect.Parameter.empty,
    )
    others = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        for p in signature.parameters.values()
        if p.name != "payload"
    ]
    submit.__signature__ = signature.replace(parameters=[*others, body])  # type: ignore[attr-defined]
    submit.__name__ = f"submit_{spec.name}"
    return submit


def _submit_route(spec: TaskSpec) -> type[FastSubmitRoute]:
    class SubmitRoute(FastSubmitRoute):
        async def submit(
            self, request: Request, response: Response, payload: BaseModel | None, client: str
        ) -> BaseModel | Response:
            task_id, _ = await enqueued(request, spec, payload, NO_OPTIONS, client, None)
            reply = accepted_reply(request, spec.name, task_id)
            return accepted(request, response, spec.name, task_id) if reply is None else reply

    SubmitRoute.__name__ = SubmitRoute.__qualname__ = f"Submit{spec.name.title()}Route"
    return SubmitRoute


def build_router(specs: Mapping[str, TaskSpec]) -> APIRouter:
    router = APIRouter(
        prefix=PREFIX,
        tags=["tasks"],
        dependencies=[Depends(client_identity)],
        responses=PROTECTED_ERRORS,
    )

    @router.get("", summary="List the registered tasks and their payload schemas")
    def list_tasks() -> list[TaskInfo]:
        return [
            TaskInfo(
                name=spec.name,
                description=spec.description,
                max_retries=spec.max_retries,
                payload_schema=spec.payload.model_json_schema(),
            )
            for spec in specs.values()
        ]

    for spec in specs.values():
        router.add_api_route(
            f"/{spec.name}",
            _submit_endpoint(spec),
            methods=["POST"],
            status_code=202,
            summary=f"Submit a {spec.name} task",
            dependencies=[Depends(require_json_body)],
            route_class_override=_submit_route(spec),
            responses=error_responses(409, 413, 415, 429),
        )

    @router.post("/{name}", status_code=202, include_in_schema=False)
    def submit_unknown(name: str) -> BaseModel:
        raise UnknownTask(f"unknown task {name!r}; registered tasks: {sorted(specs)}")

    @router.get(
        "/{task_id}",
        name="get_task",
        summary="Status, result or error of a task",
        responses=error_responses(404),
    )
    async def get_task(task_id: TaskId, queue: QueueDep) -> TaskStatusOut:
        return TaskStatusOut.from_state(await queue.state(task_id))

    @router.delete(
        "/{task_id}",
        status_code=202,
        summary="Cancel a queued task, or a running one with terminate=true",
        responses=error_responses(404, 409),
    )
    async def cancel_task(
        task_id: TaskId,
        queue: QueueDep,
        terminate: Annotated[bool, Query(description="Also kill a running execution.")] = False,
    ) -> TaskStatusOut:
        return TaskStatusOut.from_state(await queue.cancel(task_id, terminate))

    return router
