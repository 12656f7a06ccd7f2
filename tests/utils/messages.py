"""Task messages as kombu writes them onto a queue list, well-formed and malformed.

Shared by the end-to-end dead-letter tests (``tests/reliability/test_dead_letters.py``: a real
worker must survive each one) and the checker's unit tests (``tests/unit/worker/core``).
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from hypothesis import strategies as st

from worker.core.names import DEFAULT_QUEUE


def envelope(
    body: Any = None,
    headers: dict[str, Any] | None = None,
    *,
    raw_body: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A message as kombu writes it onto a list; each argument replaces one part."""
    encoded = raw_body
    if encoded is None:
        triple = [[], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
        encoded = base64.b64encode(json.dumps(triple if body is None else body).encode()).decode()
    message: dict[str, Any] = {
        "body": encoded,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"lang": "py", "task": "noop", "id": str(uuid.uuid4()), **(headers or {})},
        "properties": {
            "body_encoding": "base64",
            "delivery_info": {"exchange": "", "routing_key": DEFAULT_QUEUE},
            "delivery_mode": 2,
            "delivery_tag": str(uuid.uuid4()),
            "priority": 0,
        },
    }
    message.update(fields)
    return message


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)
HEADER_NAMES = (
    "task", "id", "timelimit", "eta", "expires", "retries", "argsrepr", "kwargsrepr",
    "ignore_result", "group", "group_index", "root_id", "parent_id", "shadow", "origin",
    "stamps", "stamped_headers", "compression", "courier_enqueued_at", "traceparent",
)  # fmt: skip
PROPERTY_NAMES = ("delivery_tag", "body_encoding", "priority", "delivery_info", "reply_to")
FIELD_NAMES = ("body", "content-type", "content-encoding", "headers", "properties")


def _with(part: str, name: str, value: Any, drop: bool) -> bytes:
    message = envelope()
    target = message if part == "field" else message[part]
    if drop:
        target.pop(name, None)
    else:
        target[name] = value
    return json.dumps(message).encode()


def _body(value: Any) -> bytes:
    return json.dumps(
        envelope(raw_body=base64.b64encode(json.dumps(value).encode()).decode())
    ).encode()


MALFORMED = st.one_of(
    st.binary(max_size=200),
    JSON.map(lambda value: json.dumps(value).encode()),
    JSON.map(_body),
    st.tuples(JSON, JSON, JSON).map(lambda triple: _body(list(triple))),
    st.builds(_with, st.just("headers"), st.sampled_from(HEADER_NAMES), JSON, st.booleans()),
    st.builds(_with, st.just("properties"), st.sampled_from(PROPERTY_NAMES), JSON, st.booleans()),
    st.builds(_with, st.just("field"), st.sampled_from(FIELD_NAMES), JSON, st.booleans()),
)
