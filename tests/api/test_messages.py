"""The message the API writes is the one ``send_task`` writes, byte for byte where it matters.

Both are produced against a real Redis and read back from it, so a kombu or Celery upgrade that
changes the envelope, the body encoding, the priority lists or the headers fails here, not in
a worker that can no longer read what the API queued.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from celery import Celery
from celery.signals import after_task_publish, before_task_publish
from hypothesis import given, settings
from hypothesis import strategies as st
from kombu import serialization
from kombu.exceptions import EncodeError

from app.messages import (
    _KOMBU_JSON,
    MessageBuilder,
    _augment,
    _Capture,
    _direct_publish,
    kombu_json_text,
    serialize,
)
from tests.utils.processes import RedisServer
from worker.celery_config import create_celery_app
from worker.core.names import DEFAULT_QUEUE, ENQUEUED_AT_HEADER
from worker.core.publish_signals import connect_publisher_signals
from worker.core.redis_client import queue_commands
from worker.core.settings import Settings

# Differ between any two messages: ids, clocks, the producer's process.
VOLATILE_PROPERTIES = {"delivery_tag", "correlation_id"}
VOLATILE_HEADERS = {"id", "root_id", ENQUEUED_AT_HEADER}


@pytest.fixture
def celery_app(own_redis: RedisServer) -> Iterator[Celery]:
    connect_publisher_signals()
    app = create_celery_app(Settings(redis_url=own_redis.url, queues=[DEFAULT_QUEUE, "reports"]))
    yield app
    app.close()


def _pop_all(client: redis.Redis) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for key in client.keys("*"):
        name = key.decode() if isinstance(key, bytes) else key
        if client.type(key) == b"list":
            found[name] = [json.loads(raw) for raw in client.lrange(key, 0, -1)]
            client.delete(key)
    return found


def _comparable(message: dict[str, Any]) -> dict[str, Any]:
    message = json.loads(json.dumps(message))
    for key in VOLATILE_PROPERTIES:
        assert message["properties"].pop(key)
    for key in VOLATILE_HEADERS:
        assert message["headers"].pop(key)
    return message


CASES: list[dict[str, Any]] = [
    {"queue": DEFAULT_QUEUE},
    {"queue": "reports", "priority": 7},
    {"queue": DEFAULT_QUEUE, "priority": 0},
    {"queue": DEFAULT_QUEUE, "countdown": 30},
    {"queue": DEFAULT_QUEUE, "eta": datetime(2030, 1, 1, tzinfo=UTC) + timedelta(seconds=1)},
]


@pytest.mark.parametrize("options", CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_built_message_matches_send_task(
    celery_app: Celery, own_redis: RedisServer, options: dict[str, Any]
) -> None:
    client = redis.Redis.from_url(own_redis.url)
    kwargs = {"echo": {"n": [1, "two", None]}, "sleep_seconds": 0.0}
    now = datetime.now(UTC)
    eta_options = dict(options)
    if "countdown" in eta_options:  # one fixed ETA for both, not two clocks
        eta_options["eta"] = now + timedelta(seconds=eta_options.pop("countdown"))
    celery_app.send_task("noop", kwargs=kwargs, task_id="reference", **eta_options)
    reference = _pop_all(client)

    builder = MessageBuilder(celery_app)
    built = builder.build("noop", kwargs, "built", **eta_options)
    builder.close()
    pipe = client.pipeline(transaction=True)
    queue_commands(pipe, built.commands)
    pipe.execute()
    ours = _pop_all(client)
    client.close()

    assert list(ours) == list(reference)  # same list, priority suffix included
    [key] = ours
    assert ours[key][0]["headers"]["id"] == "built"
    ours_message, reference_message = _comparable(ours[key][0]), _comparable(reference[key][0])
    assert ours_message["headers"] == reference_message["headers"]
    assert ours_message == reference_message


def test_publish_signals_fire_around_the_write(celery_app: Celery) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    def before(headers: dict[str, Any], **_: Any) -> None:
        headers["x-test"] = "injected"  # how trace context gets into the message
        seen.append(("before", headers))

    def after(headers: dict[str, Any], **_: Any) -> None:
        seen.append(("after", headers))

    before_task_publish.connect(before, weak=False)
    after_task_publish.connect(after, weak=False)
    try:
        builder = MessageBuilder(celery_app)
        built = builder.build("noop", {}, "signals", DEFAULT_QUEUE)
        builder.close()
        assert [event for event, _ in seen] == ["before"]
        [(_, (_, payload))] = [c for c in built.commands if c[0] == "lpush"]
        assert json.loads(payload)["headers"]["x-test"] == "injected"
        assert ENQUEUED_AT_HEADER in json.loads(payload)["headers"]
        built.published()
        assert [event for event, _ in seen] == ["before", "after"]
    finally:
        before_task_publish.disconnect(before)
        after_task_publish.disconnect(after)


@pytest.mark.parametrize("kwargs", [{}, {"echo": {"n": [1, "two", None]}, "sleep_seconds": 0.0}])
def test_the_templated_headers_are_celerys_in_the_same_order(
    celery_app: Celery, kwargs: dict[str, Any]
) -> None:
    """A submit without delay takes its headers from a template learnt once per task name;
    they must be what ``create_task_message`` makes, key order included (the wire bytes)."""
    builder = MessageBuilder(celery_app)
    for task_id in ("first", "second"):  # learnt, then reused
        kwargsrepr = repr(kwargs)
        ours = builder._from_template("noop", task_id, kwargs, kwargsrepr)
        headers, properties, body, _ = celery_app.amqp.create_task_message(
            task_id, "noop", (), kwargs, reply_to=celery_app.thread_oid, ignore_result=None,
            argsrepr="()", kwargsrepr=kwargsrepr,
        )  # fmt: skip
        assert json.dumps(ours) == json.dumps((headers, properties, body))
        ours[0]["timelimit"].append("changed by a signal")  # never shared between messages
        ours[0]["stamps"]["x"] = 1
        ours[2][2]["chain"] = []
    assert builder._from_template("noop", "third", kwargs, "")[0]["timelimit"] == [None, None]
    assert builder._from_template("noop", "third", kwargs, "")[2][2]["chain"] is None


@pytest.mark.parametrize(
    "body",
    [
        ((), {"echo": {"n": [1, "two", None]}, "s": "\u00e9\U0001f600"}, {"chain": None}),
        ((), {"when": datetime(2030, 1, 1, tzinfo=UTC), "f": 1.5, "big": 10**30}, {}),
    ],
)
def test_a_body_is_serialized_as_kombu_serializes_it(body: Any) -> None:
    assert serialize(body, "json") == serialization.dumps(body, "json")


def test_a_body_json_cannot_encode_is_kombus_encode_error() -> None:
    with pytest.raises(EncodeError):
        serialize(((), {"x": object()}, {}), "json")


@pytest.mark.parametrize(("queue", "priority"), [(DEFAULT_QUEUE, None), ("reports", 7), ("q", 0)])
def test_the_direct_lpush_is_the_one_basic_publish_hands_over(
    celery_app: Celery, queue: str, priority: int | None
) -> None:
    builder = MessageBuilder(celery_app)
    builder.connect()
    channel: Any = builder._channel
    channel._next_delivery_tag = lambda: "tag"  # the one random part, fixed for both

    def message() -> dict[str, Any]:
        headers = {"id": "x", "timelimit": [None, None], "s": "\u00e9"}
        properties = {"correlation_id": "x", "reply_to": "r", "delivery_mode": 2}
        return channel.prepare_message(  # type: ignore[no-any-return]
            "eyJhIjogMX0=", priority, "application/json", "utf-8", headers, properties
        )

    capture = _Capture()
    channel.basic_publish(message(), exchange="", routing_key=queue, _publish_batch=capture)
    assert _direct_publish(channel, message(), "", queue) == capture.commands
    channel._expires = {queue: 60_000}  # a queue with x-expires: kombu's own path
    assert _direct_publish(channel, message(), "", queue) is None
    builder.close()


def test_the_augmented_message_is_kombus_with_a_uuid4_delivery_tag(celery_app: Celery) -> None:
    builder = MessageBuilder(celery_app)
    builder.connect()
    channel: Any = builder._channel

    def message() -> dict[str, Any]:
        properties = {"correlation_id": "x", "reply_to": "r", "delivery_mode": 2}
        return channel.prepare_message(  # type: ignore[no-any-return]
            '{"a": 1}', None, "application/json", "utf-8", {"id": "x"}, properties
        )

    ours, kombus = message(), message()
    _augment(channel, ours, "", DEFAULT_QUEUE)
    channel._inplace_augment_message(kombus, "", DEFAULT_QUEUE)
    tags = [m["properties"].pop("delivery_tag") for m in (ours, kombus)]
    assert json.dumps(ours) == json.dumps(kombus)
    assert all(str(uuid.UUID(tag, version=4)) == tag for tag in tags)
    builder.close()


def _circular() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)


def _encoded(value: Any, encode: Any) -> tuple[str, str]:
    try:
        return "ok", encode(value)
    except Exception as exc:
        return type(exc).__name__, str(exc)


@settings(max_examples=300, deadline=None)
@given(value=JSON_VALUES)
def test_json_text_is_kombus_encoder_s(value: Any) -> None:
    assert _encoded(value, kombu_json_text) == _encoded(value, _KOMBU_JSON.encode)


@pytest.mark.parametrize(
    "value",
    [
        {"when": datetime(2030, 1, 1, tzinfo=UTC), "raw": b"\xff", "id": uuid.UUID(int=7)},
        [object()], _circular(), {"a": {"b": _circular()}}, "\u00e9", [math.nan, -math.inf],
        [[[[[[[[[[]]]]]]]]]],
    ],
    ids=["kombu types", "not JSON", "a cycle", "a nested cycle", "a string", "non-finite", "deep"],
)  # fmt: skip
def test_json_text_is_kombus_encoder_s_whatever_the_value(value: Any) -> None:
    assert _encoded(value, kombu_json_text) == _encoded(value, _KOMBU_JSON.encode)
