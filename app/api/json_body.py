"""The submit body: sent as JSON (else 415), and standard JSON (else 422).

Python's ``json`` reads ``NaN``, ``Infinity`` and ``1e400`` (as ``inf``), which RFC 8259 does
not allow and which no response can carry back: a validation error quoting one was a 500, and
an accepted one made the task's status a 500 once the worker echoed it. So does a lone
surrogate (``"\\ud800"``, or its bytes), which JSON's grammar lets through but which is no
Unicode character (RFC 8259 section 8.2; I-JSON, RFC 7493, forbids it): no UTF-8 response
carries it.
"""

from __future__ import annotations

import email.message
import json
import math
import re
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

from fastapi import Request, Response
from fastapi.routing import APIRoute

from app.api.errors import UnsupportedMediaType


def is_json_media_type(content_type: str) -> bool:
    """application/json or application/*+json, parameters aside: what FastAPI reads as JSON,
    decided the way FastAPI decides it (an ``email.message`` parse of the header)."""
    if content_type == "application/json":
        return True  # nearly every request: no parse
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


async def require_json_body(request: Request) -> None:
    """415 for a body FastAPI would not read as JSON, instead of its 422 "Input should be a
    valid dictionary" that shows the client's JSON as a string. A body without Content-Type
    is one of them (FastAPI's strict_content_type: a browser sends such a body cross-site
    without a preflight). An empty body has nothing to misread and stays accepted."""
    content_type = request.headers.get("content-type")
    if content_type and is_json_media_type(content_type):
        return
    if not await request.body():  # FastAPI has read it already: this is its cached copy
        return
    if content_type:
        received = content_type.partition(";")[0].strip()[:64]
        got = f"Content-Type: {received}" if received else "an empty Content-Type"
    else:
        got = "no Content-Type"
    raise UnsupportedMediaType(
        f"the body must be JSON sent with Content-Type: application/json; got {got}"
    )


class _NotStandardJson(ValueError):
    pass


def _refuse_constant(name: str) -> NoReturn:
    raise _NotStandardJson(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NotStandardJson("a number too large for a float")
    return value


# json.loads with hooks makes a new decoder and scanner per call; one made once does the same.
_STANDARD = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def _loads(body: bytes) -> Any:
    """``json.loads(body, parse_constant=..., parse_float=...)``, its decoder made once: for
    bytes, json.loads decodes them as below and hands the text to such a decoder."""
    if isinstance(body, bytes | bytearray):
        return _STANDARD.decode(body.decode(json.detect_encoding(body), "surrogatepass"))
    return json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)


_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _holds_surrogate(value: Any) -> bool:
    """Whether a string of ``value`` (a key too) holds a surrogate; one level at a time, as
    ``json_depth`` walks a payload, so a deep one cannot exhaust the stack."""
    level = [value]
    while level:
        below: list[Any] = []
        for item in level:
            if isinstance(item, str):
                if _SURROGATE.search(item):
                    return True
            elif isinstance(item, dict):
                below.extend(item)
                below.extend(item.values())
            elif isinstance(item, list):
                below.extend(item)
        level = below
    return False


def loads_standard_json(body: bytes) -> Any:
    """``json.loads`` refusing what RFC 8259 refuses, as a ``JSONDecodeError`` (FastAPI's 422
    ``json_invalid``, with the reason in ``ctx.error``); so are a lone surrogate, and a value
    nested deeper than the parser reads, which FastAPI would answer with an undocumented 400
    "There was an error parsing the body"."""
    try:
        value = _loads(body)
        # Only an escape or a byte past ASCII makes a surrogate: the common body is not walked.
        if (not body.isascii() or b"\\" in body) and _holds_surrogate(value):
            raise _NotStandardJson("a lone surrogate is not a Unicode character")
        return value
    except json.JSONDecodeError:
        raise
    except ValueError as exc:  # ours, or an integer past Python's 4300 digits
        reason = str(exc) if isinstance(exc, _NotStandardJson) else "a number too long to read"
        raise json.JSONDecodeError(reason, body.decode("utf-8", "replace"), 0) from exc
    except RecursionError as exc:  # nested past the parser's recursion limit (~1000 levels)
        reason = "nested too deep to read"
        raise json.JSONDecodeError(reason, body.decode("utf-8", "replace"), 0) from exc


class StandardJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads_standard_json(await self.body())
        return self._json


class StandardJsonRoute(APIRoute):
    """A route whose JSON body is read by ``loads_standard_json`` (FastAPI's documented way
    to change how a body is read: a custom ``Request`` class handed to the route)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def standard_json_handler(request: Request) -> Response:
            return await handler(StandardJsonRequest(request.scope, request.receive))

        return standard_json_handler
