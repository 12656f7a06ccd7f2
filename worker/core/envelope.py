"""What a task message must look like before Celery's request code may see it.

Celery trusts the broker: a message whose body is not its ``[args, kwargs, embed]`` triple, or
whose ``timelimit`` header is not a pair, raises inside the consumer (``ValueError`` in
``celery/worker/request.py``), which kills the worker, and the message, back in its list, kills
every restart. Other shapes are dropped by Celery with a log line and nothing else (a body that
is not JSON) or accepted and then lost without trace (a ``kwargs`` that is a list).

``check`` decodes a raw message from a queue list the way kombu and Celery will (kombu's JSON
envelope, base64 body, optional compression, the JSON body) and checks every header and body
field Celery reads, with the types it needs. A message that passes cannot raise in Celery's
consumer; one that fails raises ``Unfit`` naming what is wrong, for the dead-letter list
(``worker/core/dead_letters.py``). Only Celery's message protocol 2 (what every Celery 4+
producer sends) is accepted.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from celery.utils.time import maybe_iso8601
from kombu.compression import decompress
from kombu.utils import json as kombu_json

# Bounded reasons: the label values of ``courier_dead_letters_total``.
ENVELOPE = "envelope"  # not kombu's JSON envelope
BODY = "body"  # the body does not decode to Celery's [args, kwargs, embed]
HEADERS = "headers"  # a header Celery reads has a type it cannot use
UNKNOWN_TASK = "unknown_task"  # a well-formed message for a task this worker does not have
REASONS = (ENVELOPE, BODY, HEADERS, UNKNOWN_TASK)

JSON_CONTENT_TYPE = "application/json"
_STR_OR_NONE_HEADERS = (
    "shadow", "root_id", "parent_id", "group", "argsrepr", "kwargsrepr", "origin", "lang",
)  # fmt: skip
_SIGNATURE_LISTS = ("callbacks", "errbacks", "chain")


class Unfit(Exception):
    """The message cannot be handed to Celery: ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, detail: str, envelope: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.envelope = envelope

    @property
    def headers(self) -> dict[str, Any]:
        return _object(self.envelope, "headers")

    @property
    def routing_key(self) -> str | None:
        """The producer's routing key, when the envelope has a readable one."""
        key = _object(_object(self.envelope, "properties"), "delivery_info").get("routing_key")
        return key if isinstance(key, str) else None


def _object(parent: dict[str, Any] | None, name: str) -> dict[str, Any]:
    """``parent[name]`` when it is a JSON object, else empty: an unfit envelope is any shape."""
    value = (parent or {}).get(name)
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class Checked:
    envelope: dict[str, Any]  # what kombu delivers (the decoded JSON envelope, untouched)
    task: str
    task_id: str
    # The body as kombu's Message would decode it ([args, kwargs, embed]): the channel hands it
    # to that Message, which then does not decode it again (``worker/transport/channel.py``).
    body: Any = None


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def decode_envelope(raw: bytes | str) -> dict[str, Any]:
    try:
        envelope = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise Unfit(ENVELOPE, f"the envelope cannot be decoded as JSON ({exc})"[:200]) from None
    if not isinstance(envelope, dict):
        raise Unfit(ENVELOPE, f"the envelope is a JSON {_type(envelope)}, not an object")
    properties = envelope.get("properties")
    if not isinstance(properties, dict):
        raise Unfit(ENVELOPE, "the envelope has no 'properties' object", envelope)
    tag = properties.get("delivery_tag")
    if not isinstance(tag, str) or not tag:
        raise Unfit(ENVELOPE, "properties.delivery_tag is not a string", envelope)
    info = properties.get("delivery_info")
    if info is not None and not (
        isinstance(info, dict)
        and all(isinstance(info.get(k), str | None) for k in ("exchange", "routing_key"))
    ):
        raise Unfit(ENVELOPE, "properties.delivery_info is not an object of strings", envelope)
    priority = properties.get("priority")
    if priority is not None and (type(priority) is not int or not 0 <= priority <= 255):
        raise Unfit(ENVELOPE, "properties.priority is not an integer from 0 to 255", envelope)
    return envelope


def _body_bytes(envelope: dict[str, Any]) -> bytes:
    properties = envelope["properties"]
    body = envelope.get("body")
    if not isinstance(body, str):
        raise Unfit(BODY, f"the body is a {_type(body)}, not a string", envelope)
    encoding = properties.get("body_encoding")
    if encoding == "base64":
        try:
            data = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise Unfit(BODY, f"the body is not valid base64 ({exc})", envelope) from None
    elif encoding is None:
        data = body.encode("utf-8", "surrogatepass")
    else:
        raise Unfit(BODY, f"unknown body_encoding {str(encoding)[:40]!r}", envelope)
    compression = (envelope.get("headers") or {}).get("compression")
    if compression is not None:
        try:
            data = decompress(data, compression)
        except Exception as exc:  # kombu raises whatever its codec raises
            raise Unfit(BODY, f"the body does not decompress ({exc})"[:200], envelope) from None
    return data


def _decode_body(envelope: dict[str, Any]) -> Any:
    content_type = envelope.get("content-type")
    if content_type != JSON_CONTENT_TYPE:
        detail = f"content-type {str(content_type)[:60]!r} is not {JSON_CONTENT_TYPE}"
        raise Unfit(BODY, detail, envelope)
    encoding = envelope.get("content-encoding") or "utf-8"
    if not isinstance(encoding, str) or encoding.lower() not in ("utf-8", "utf8"):
        raise Unfit(BODY, f"content-encoding {str(encoding)[:40]!r} is not utf-8", envelope)
    try:
        # kombu's JSON, as the Message will decode it: its object hook turns tagged objects
        # ({"__type__": "datetime", ...}) into values, and a tag it cannot read raises anything.
        return kombu_json.loads(_body_bytes(envelope).decode("utf-8"))
    except Unfit:
        raise
    except Exception as exc:
        raise Unfit(BODY, f"the body cannot be decoded as JSON ({exc})"[:200], envelope) from None


def _check_body(body: Any, envelope: dict[str, Any]) -> None:
    if not isinstance(body, list) or len(body) != 3:
        shape = f"a list of {len(body)}" if isinstance(body, list) else f"a JSON {_type(body)}"
        detail = f"the body is {shape}, not Celery's [args, kwargs, embed]"
        raise Unfit(BODY, detail, envelope)
    args, kwargs, embed = body
    if not isinstance(args, list):
        raise Unfit(BODY, f"args is a JSON {_type(args)}, not a list", envelope)
    if not isinstance(kwargs, dict):
        raise Unfit(BODY, f"kwargs is a JSON {_type(kwargs)}, not an object", envelope)
    if not isinstance(embed, dict):
        raise Unfit(BODY, f"embed is a JSON {_type(embed)}, not an object", envelope)
    for name in _SIGNATURE_LISTS:
        value = embed.get(name)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(s, dict) for s in value)
        ):
            raise Unfit(BODY, f"embed.{name} is not a list of signatures", envelope)
    chord = embed.get("chord")
    if chord is not None and not isinstance(chord, dict):
        raise Unfit(BODY, "embed.chord is not a signature", envelope)


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _is_text(value: Any) -> bool:
    """A string Redis clients can write: JSON escapes can carry lone surrogates."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_time(value: Any) -> bool:
    """Parsed as Celery's request parses it (its own ISO 8601 reader)."""
    try:
        return isinstance(value, str) and maybe_iso8601(value) is not None
    except (AttributeError, ValueError, TypeError, OverflowError):
        return False


def _is_time_limits(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(v is None or (_is_number(v) and v >= 0) for v in value)
    )


# Header -> (what Celery needs of it when present and not null, how to say it is not).
_HEADER_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{name: (_is_text, "a string") for name in _STR_OR_NONE_HEADERS},
    "timelimit": (_is_time_limits, "a pair of seconds or nulls"),
    "eta": (_is_time, "an ISO 8601 time"),
    "expires": (_is_time, "an ISO 8601 time"),
    "retries": (lambda v: type(v) is int and v >= 0, "a non-negative integer"),
    "ignore_result": (lambda v: isinstance(v, bool), "a boolean"),
    "group_index": (lambda v: type(v) is int, "an integer"),
    "stamped_headers": (lambda v: isinstance(v, list), "a list"),
    "stamps": (lambda v: isinstance(v, dict), "an object"),
}


def _check_headers(headers: dict[str, Any], envelope: dict[str, Any]) -> tuple[str, str]:
    task, task_id = headers.get("task"), headers.get("id")
    if not task or not _is_text(task):
        raise Unfit(HEADERS, "no 'task' header: not a Celery protocol 2 task message", envelope)
    if not task_id or not _is_text(task_id):
        raise Unfit(HEADERS, "header 'id' is not a non-empty string", envelope)
    for name, (fits, expected) in _HEADER_CHECKS.items():
        value = headers.get(name)
        if value is not None and not fits(value):
            raise Unfit(HEADERS, f"header {name!r} is not {expected}", envelope)
    return task, task_id


def check(raw: bytes | str, tasks: Collection[str] | None = None) -> Checked:
    """The envelope kombu will deliver, checked; ``Unfit`` when Celery could not run it.
    ``tasks``: the task names this worker runs (None: any name passes)."""
    envelope = decode_envelope(raw)
    headers = envelope.get("headers")
    if not isinstance(headers, dict):
        raise Unfit(HEADERS, "the envelope has no 'headers' object", envelope)
    task, task_id = _check_headers(headers, envelope)
    body = _decode_body(envelope)
    _check_body(body, envelope)
    if tasks is not None and task not in tasks:
        raise Unfit(UNKNOWN_TASK, f"task {task[:200]!r} is not registered here", envelope)
    return Checked(envelope, task, task_id, body)
