"""The common submit without FastAPI's dependency solver; every other request goes to FastAPI.

Counted with callgrind, FastAPI's handling of a submit route (solving its dependencies anew on
every request, reading the body, validating and serialising the response) was half of a
submit's instructions, more than the Redis write. The common request, a JSON body sent as
``application/json`` with no query string and no ``Idempotency-Key``, is taken here by calling
the functions FastAPI would call, in the order it would reach a side effect: the security
schemes and ``client_identity`` (``client_identity_from_headers``, the same in one pass over the
headers), the route's body field (FastAPI's own validation), then the
rate limiter, the endpoint's steps and FastAPI's ``serialize_response``.

Anything else, and every failure before the rate limiter (bad JSON, a payload the model refuses,
a missing or wrong key, an overridden dependency, a body that arrives in pieces), is handed to
FastAPI's own handler with the body replayed, before anything is written: its error bodies are
FastAPI's. An error raised after that point (429, 503, a payload nested too deep) is raised by
the same function in the same order as on FastAPI's path, so the same exception handler
answers it. ``tests/api/test_fast_submit.py`` compares both paths byte for byte.

The route's handler offers each request to ``fast_path``; so does
``app.middleware.submit_dispatch``, before FastAPI's routing, for a path whose route it has
learnt (a request it declined is marked ``DECLINED`` and goes to FastAPI's handler without a
second offer).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response
from fastapi.datastructures import DefaultPlaceholder
from fastapi.routing import serialize_response
from pydantic import BaseModel
from starlette.types import Message, Receive

from app.api.json_body import StandardJsonRoute, loads_standard_json
from app.api.security import client_identity_from_headers, rate_limited_client

_JSON = b"application/json"


def replay(first: Message, receive: Receive) -> Receive:
    """``receive`` that gives ``first`` again before the rest: FastAPI reads the body anew."""
    pending = [first]

    async def replaying() -> Message:
        return pending.pop() if pending else await receive()

    return replaying


def _replayed(request: Request, first: Message) -> Request:
    """The request for FastAPI's handler, its body's first message given again: made only
    when the fast path hands a request over."""
    return Request(request.scope, replay(first, request.receive))


def _is_common(request: Request) -> bool:
    """No query string, a JSON body, no ``Idempotency-Key``, no dependency overridden."""
    scope = request.scope
    if scope["query_string"] or request.app.dependency_overrides:
        return False
    content_type = None
    for name, value in scope["headers"]:
        if name == b"content-type":
            if content_type is None:  # the first one, as Starlette's Headers.get reads it
                content_type = value
        elif name == b"idempotency-key":
            return False
    return content_type == _JSON


class PrebuiltResponse(Response):
    """A response whose body and headers are already made (``content-length`` and
    ``content-type`` included): Starlette's ``Response`` sends them as they are."""

    def __init__(self, status_code: int, body: bytes, raw_headers: list[tuple[bytes, bytes]]):
        self.status_code = status_code
        self.body = body
        self.raw_headers = raw_headers
        self.background = None


class _SubResponse(Response):
    """FastAPI's sub-response, of which the endpoint sets and the fast path reads only the
    headers: made without rendering an empty body and the ``content-length`` header that
    ``Response()`` adds and FastAPI's own path drops again."""

    def __init__(self) -> None:
        self.raw_headers = []


def _validated_as_is(response_type: Any) -> bool:
    """FastAPI's response validation hands back an instance of this exact model unchanged
    (pydantic does not revalidate instances by default): serialising it needs no validation."""
    return (
        isinstance(response_type, type)
        and issubclass(response_type, BaseModel)
        and response_type.model_config.get("revalidate_instances", "never") == "never"
    )


@dataclass(frozen=True)
class HandOver:
    """The fast path declined: FastAPI answers, with ``first`` (the body's first message, when
    it was read) given again before the rest of the body."""

    first: Message | None = None


# Set in the scope of a request the dispatch (``app.middleware.submit_dispatch``) offered to
# the fast path and that was declined: the route's handler then goes straight to FastAPI's.
DECLINED = "courier.fast_submit.declined"


class FastSubmitRoute(StandardJsonRoute):
    """A submit route that offers each request to its fast path first.

    A subclass per task gives ``submit``, the endpoint's work once the request is valid:
    FastAPI re-creates an included route from its class, so per-route state lives there."""

    async def submit(
        self, request: Request, response: Response, payload: BaseModel | None, client: str
    ) -> BaseModel | Response:
        """The 202's model (its headers set on ``response``), or the whole 202 already made."""
        raise NotImplementedError

    @functools.cached_property
    def fast_path(self) -> Callable[[Request], Awaitable[Response | HandOver]] | None:
        """The fast path: a common submit's 202 (or an error raised after its side effects,
        as FastAPI's path raises it), or ``HandOver``; None when this route's shape is not the
        one it reproduces."""
        body_field, response_field = self.body_field, self.response_field
        status_code = self.status_code
        if (
            body_field is None
            or response_field is None
            or status_code is None
            or not isinstance(self.response_class, DefaultPlaceholder)
        ):
            return None
        response_type = response_field.field_info.annotation
        as_is = _validated_as_is(response_type)
        serialized: dict[str, Any] = {
            "include": self.response_model_include,
            "exclude": self.response_model_exclude,
            "by_alias": self.response_model_by_alias,
            "exclude_unset": self.response_model_exclude_unset,
            "exclude_defaults": self.response_model_exclude_defaults,
            "exclude_none": self.response_model_exclude_none,
        }

        async def fast(request: Request) -> Response | HandOver:
            if not _is_common(request):
                return _NOTHING_READ
            first = await request.receive()
            if first["type"] != "http.request" or first.get("more_body", False):
                return HandOver(first)
            try:
                payload, errors = body_field.validate(
                    loads_standard_json(first.get("body", b"")), {}, loc=("body",)
                )
                client = None if errors else client_identity_from_headers(request)
            except Exception:  # FastAPI's path raises it again, and answers it its way
                client = None
            if client is None:
                return HandOver(first)
            # From here on, as on FastAPI's path: a side effect, then errors as exceptions.
            client = await rate_limited_client(request, client)
            headers = _SubResponse()  # FastAPI's sub-response: the endpoint's headers
            accepted = await self.submit(request, headers, payload, client)
            if isinstance(accepted, Response):
                return accepted
            if as_is and type(accepted) is response_type:
                # serialize_response's validation would return it unchanged
                content = response_field.serialize_json(accepted, **serialized)
            else:
                content = await serialize_response(
                    field=response_field, response_content=accepted, dump_json=True, **serialized
                )
            response = Response(content, status_code, media_type="application/json")
            response.raw_headers.extend(headers.raw_headers)
            return response

        return fast

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        fast = self.fast_path
        if fast is None:
            return handler  # not the shape the fast path reproduces

        async def fast_or_full(request: Request) -> Response:
            if DECLINED in request.scope:  # the dispatch's offer was declined already
                return await handler(request)
            answer = await fast(request)
            if isinstance(answer, HandOver):
                if answer.first is not None:
                    request = _replayed(request, answer.first)
                return await handler(request)
            return answer

        return fast_or_full


_NOTHING_READ = HandOver()
