"""Celery task messages built exactly as ``send_task`` builds them, but not yet written.

Submitting a task takes two writes: the task's record and its message. ``send_task`` would
publish the message on its own connection, from a worker thread (it blocks), and subscribe to
the result channel on top; here Celery still creates the message (``create_task_message``),
kombu's own Redis channel still wraps it (envelope, body encoding, priority list) and the
publish signals still fire (trace context, enqueue timestamp, sent counter), but kombu hands
the final ``LPUSH`` to a capture instead of to Redis (the signals sent as Celery sends them,
``app.signal_dispatch``). The caller then writes record and message in one MULTI/EXEC: one
round trip, all or nothing, and from the event loop with the asyncio client.
``tests/api/test_messages.py`` checks the message against one ``send_task`` wrote.
"""

from __future__ import annotations

import os
import threading
from copy import copy
from dataclasses import dataclass, field
from datetime import datetime
from json import encoder as json_encoder
from typing import Any, cast

from celery import Celery
from celery.signals import after_task_publish, before_task_publish
from celery.utils.saferepr import saferepr
from kombu import Connection, serialization
from kombu.compression import compress
from kombu.exceptions import EncodeError
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import Channel
from kombu.utils import json as kombu_json

from app import signal_dispatch
from app.uuid4 import uuid4_text
from worker.core.redis_client import Command
from worker.transport import headroom
from worker.transport.channel import Channel as CourierChannel


def kwargs_repr(kwargs: dict[str, Any], limit: int) -> str:
    """What Celery's ``saferepr`` gives for a JSON payload (Flower shows it), at the cost of
    ``repr``: saferepr walks the value in Python, a visible share of a submit's CPU. Bounded
    as Celery bounds it; API payloads are already capped by ``COURIER_MAX_PAYLOAD_BYTES``."""
    text = repr(kwargs)
    return text if len(text) <= limit else saferepr(kwargs, limit)


# kombu's JSON encoder class, made once: ``kombu.utils.json.dumps`` makes one per call.
_KOMBU_JSON = kombu_json.JSONEncoder()
# And the C encoder its encode() makes per call (with a closure and markers), made once with
# its settings but without circular-reference markers: whatever it raises (a cycle, a value
# JSON cannot hold) is left to _KOMBU_JSON.encode, which raises its own error.
_MAKE_C_ENCODER: Any = getattr(json_encoder, "c_make_encoder", None)
_C_ENCODE: Any = (
    _MAKE_C_ENCODER(
        None, _KOMBU_JSON.default, json_encoder.encode_basestring_ascii, None,
        _KOMBU_JSON.key_separator, _KOMBU_JSON.item_separator, _KOMBU_JSON.sort_keys,
        _KOMBU_JSON.skipkeys, _KOMBU_JSON.allow_nan,
    )
    if _MAKE_C_ENCODER is not None and _KOMBU_JSON.ensure_ascii and _KOMBU_JSON.indent is None
    else None
)  # fmt: skip


def kombu_json_text(value: Any) -> str:
    """``_KOMBU_JSON.encode(value)``, without its per-call C encoder."""
    if _C_ENCODE is not None and not isinstance(value, str):
        try:
            return "".join(_C_ENCODE(value, 0))
        except Exception:  # the full encoder below raises its own error
            pass
    return _KOMBU_JSON.encode(value)


def serialize(body: Any, serializer: str) -> tuple[str, str, Any]:
    """``kombu.serialization.dumps(body, serializer)``, and for kombu's own JSON (Celery's
    default) the same bytes at half the instructions: ``dumps`` wraps its encoder in a
    generator-based context manager per call, and kombu's encoder builds a ``JSONEncoder``
    per call. Any other serializer, or a JSON encoder registered in kombu's place, is called
    through ``dumps`` as before."""
    entry = serialization.registry._encoders.get(serializer)  # type: ignore[attr-defined]
    if entry is None or entry[2] is not kombu_json.dumps:
        return serialization.dumps(body, serializer)
    content_type, encoding, _ = entry
    try:
        return content_type, encoding, kombu_json_text(body)
    except Exception as exc:  # as kombu's dumps reraises what its encoder raises
        raise EncodeError(exc) from exc


# The ``_put`` methods whose common case ``_direct_publish`` repeats: kombu's Redis channel's,
# and Courier's, which hands every publish below maxmemory to kombu's.
_PLAIN_PUTS = (kombu_redis.Channel._put, CourierChannel._put)


def _direct_publish(
    channel: Channel,
    message: dict[str, Any],
    exchange: str,
    routing_key: str,
) -> list[Command] | None:
    """The ``LPUSH`` that ``channel.basic_publish`` hands to its publish batch, made without
    the calls between (``basic_publish``, two ``_put``, and a ``JSONEncoder`` per message):
    kombu's own augmentation of the message, its priority list, its JSON. Only for what that
    covers, a direct queue without ``x-expires`` below maxmemory; None for anything else,
    which then takes ``basic_publish``."""
    if (
        exchange
        or type(channel)._put not in _PLAIN_PUTS
        or headroom.publishing_past_maxmemory()
        or routing_key in (getattr(channel, "_expires", None) or ())
    ):
        return None
    _augment(channel, message, exchange, routing_key)
    priority = channel._get_message_priority(message, reverse=False)
    key = channel._q_for_pri(routing_key, priority)  # type: ignore[attr-defined]
    return [("lpush", (key, kombu_json_text(message)))]


# kombu's own augmentation and delivery tag, which _augment repeats.
_KOMBU_AUGMENT = Channel._inplace_augment_message
_KOMBU_DELIVERY_TAG = Channel._next_delivery_tag


def _function(method: Any) -> Any:
    """The function a bound method calls (None for anything else: an instance's own)."""
    return getattr(method, "__func__", None)


def _augment(channel: Channel, message: dict[str, Any], exchange: str, routing_key: str) -> None:
    """``channel._inplace_augment_message``, its delivery tag (kombu's ``uuid()``, a uuid4
    string) made without the ``UUID`` object; a channel that changes either is called."""
    if _function(channel._inplace_augment_message) is not _KOMBU_AUGMENT or (
        _function(channel._next_delivery_tag) is not _KOMBU_DELIVERY_TAG
    ):
        channel._inplace_augment_message(message, exchange, routing_key)
        return
    message["body"], body_encoding = channel.encode_body(message["body"], channel.body_encoding)
    properties = message["properties"]
    properties.update(body_encoding=body_encoding, delivery_tag=uuid4_text())
    properties["delivery_info"].update(exchange=exchange, routing_key=routing_key)


class _Capture:
    """Stands in for kombu's Redis publish batch, which is handed each final command."""

    def __init__(self) -> None:
        self.commands: list[Command] = []

    def add(self, name: str, *args: Any) -> None:
        self.commands.append((name, args))


@dataclass
class PreparedMessage:
    task_id: str
    name: str
    exchange: str
    routing_key: str
    headers: dict[str, Any]
    body: Any
    commands: list[Command] = field(default_factory=list)

    def published(self) -> None:
        """Fire ``after_task_publish``, as ``send_task`` does once Redis took the message."""
        signal_dispatch.send(
            after_task_publish,
            self.name,
            body=self.body,
            headers=self.headers,
            exchange=self.exchange,
            routing_key=self.routing_key,
        )


class MessageBuilder:
    def __init__(self, celery: Celery) -> None:
        self._celery = celery
        conf = celery.conf
        # Read once: Celery's configuration lookups are slow enough to show in a profile.
        self._serializer: str = conf.task_serializer
        self._compression: str | None = conf.task_compression
        self._retry_policy: dict[str, Any] = dict(conf.task_publish_retry_policy)
        self._delivery_mode = conf.task_default_delivery_mode
        self._connection: Connection | None = None
        self._channel: Channel | None = None
        self._lock = threading.Lock()
        self._templates: dict[str, _HeadersTemplate] = {}
        self._declared: dict[str, Any] = {}

    @property
    def ready(self) -> bool:
        return self._channel is not None

    def connect(self) -> None:
        """Open kombu's channel once; its constructor pings Redis, so call it off the loop.

        The channel is only used to shape messages: it never writes one."""
        with self._lock:
            if self._channel is None:
                connection = self._celery.connection_for_write()
                try:
                    # One attempt: the caller answers 503 at once, not after kombu's retry
                    # intervals, nor after a second socket timeout when Redis does not answer.
                    connection.ensure_connection(max_retries=0)
                    self._channel = cast(Channel, connection.default_channel)
                except Exception:
                    connection.release()
                    raise
                self._connection = connection

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.release()
            self._connection = self._channel = None

    def _from_template(
        self, name: str, task_id: str, kwargs: dict[str, Any], kwargsrepr: str
    ) -> tuple[dict[str, Any], dict[str, Any], tuple[Any, ...]]:
        """``create_task_message``'s headers, properties and body for a submit without delay,
        from a template learnt once per task name: Celery builds the same ~20 headers anew
        for each message, ~3 % of a submit's instructions. ``tests/api/test_messages.py``
        compares the result with ``send_task``'s, byte for byte."""
        template = self._templates.get(name)
        if template is None or template.pid != os.getpid():
            template = self._templates[name] = _HeadersTemplate.learn(self._celery, name)
        headers = _fill(template, task_id, kwargsrepr)
        # Celery's reply_to is per thread (thread_oid): read per message, not templated.
        properties = {"correlation_id": task_id, "reply_to": self._celery.thread_oid}
        return headers, properties, ((), kwargs, template.embed.copy())

    def build(
        self,
        name: str,
        kwargs: dict[str, Any],
        task_id: str,
        queue: str,
        countdown: float | None = None,
        eta: datetime | None = None,
        priority: int | None = None,
    ) -> PreparedMessage:
        """Celery's message for ``send_task(name, kwargs=..., queue=...)``; fires
        ``before_task_publish``. Call ``published()`` on the result after writing it."""
        if self._channel is None:
            self.connect()
        channel = self._channel
        assert channel is not None
        app = self._celery
        declared = self._declared.get(queue)
        if declared is None:
            declared = self._declared[queue] = app.amqp.queues[queue]
        kwargsrepr = kwargs_repr(kwargs, app.amqp.kwargsrepr_maxsize)
        if countdown is None and eta is None:
            headers, properties, body = self._from_template(name, task_id, kwargs, kwargsrepr)
        else:
            headers, properties, body, _ = app.amqp.create_task_message(
                task_id,
                name,
                (),
                kwargs,
                countdown=countdown,
                eta=eta,
                reply_to=app.thread_oid,
                ignore_result=None,  # as send_task leaves it: the task's own setting decides
                argsrepr="()",
                kwargsrepr=kwargsrepr,
            )
        # A direct queue is published through the anonymous exchange, as send_task routes it.
        exchange, routing_key = "", declared.name
        signal_dispatch.send(
            before_task_publish,
            name,
            body=body,
            exchange=exchange,
            routing_key=routing_key,
            declare=[declared],
            headers=headers,
            properties=properties,
            retry_policy=dict(self._retry_policy),
        )
        content_type, encoding, serialized = serialize(body, self._serializer)
        payload: str | bytes = serialized
        if self._compression:
            payload, headers["compression"] = compress(payload, self._compression)
        delivery_mode = declared.exchange.delivery_mode or self._delivery_mode
        properties["delivery_mode"] = 2 if delivery_mode in (2, "persistent") else 1
        message = channel.prepare_message(
            payload, priority, content_type, encoding, headers, properties
        )
        commands = _direct_publish(channel, message, exchange, routing_key)
        if commands is None:
            capture = _Capture()
            channel.basic_publish(
                message, exchange=exchange, routing_key=routing_key, _publish_batch=capture
            )
            commands = capture.commands
        if not any(command == "lpush" for command, _ in commands):
            # kombu's Redis channel no longer hands its write to a publish batch: fail loudly
            # rather than publish outside the MULTI (tests/api/test_messages.py says more).
            raise RuntimeError("kombu's Redis channel did not hand over the message's LPUSH")
        return PreparedMessage(task_id, name, exchange, routing_key, headers, body, commands)


@dataclass(frozen=True)
class _HeadersTemplate:
    """What ``create_task_message`` gives for one task name when nothing is delayed: the same
    for every submit of that name in this process, but for the task id and the kwargs."""

    pid: int  # ``origin`` names the process: a forked child makes its own
    headers: dict[str, Any]
    embed: dict[str, Any]
    mutable: tuple[str, ...]  # header values a publish signal could change in place

    @classmethod
    def learn(cls, celery: Celery, name: str) -> _HeadersTemplate:
        headers, _, body, _ = celery.amqp.create_task_message(
            "", name, (), {}, reply_to="", ignore_result=None, argsrepr="()", kwargsrepr=""
        )
        mutable = tuple(k for k, v in headers.items() if isinstance(v, list | dict))
        return cls(os.getpid(), headers, body[2], mutable)


def _fill(template: _HeadersTemplate, task_id: str, kwargsrepr: str) -> dict[str, Any]:
    headers = template.headers.copy()
    headers["id"] = headers["root_id"] = task_id
    headers["kwargsrepr"] = kwargsrepr
    for key in template.mutable:
        headers[key] = copy(headers[key])
    return headers
