"""Two targeted work-arounds for kombu's Redis transport, applied in worker processes.

1. A dead channel raising AttributeError. When Redis drops the connection, Celery's consumer
   closes its channel and reconnects on a new one. Anything that still touches the old channel
   afterwards (pushing its delivered messages back on close, acknowledging a task that finished
   during the outage) makes kombu build a connection pool from a transport already detached
   from its connection, which raises ``AttributeError: 'NoneType' object has no attribute
   'hostname'`` (or ``'client'``). Celery takes that for an unrecoverable error and the worker
   hangs without consuming (reproduced here by the Redis-restart chaos test; kombu issues 582,
   970, celery 10205). Raising a connection error instead puts kombu and Celery on their normal
   recovery path: the error is logged and ignored, the message stays in kombu's ``unacked``
   hash and the periodic sweep restores it after the visibility timeout (a finished task is
   then skipped as a duplicate).

2. A message lost between BRPOP and the ``unacked`` write. kombu takes a message off its list
   with BRPOP and only then records it in ``unacked`` (a second command). When Redis goes away
   between the two, the message is in no list and in no hash: Celery drops the connection and
   the message with it, so a task accepted with a 202 never runs (the Redis-kill chaos test
   lost about one task in five runs this way). Here the worker keeps such a message in memory
   and puts it back at the head of its list (as kombu's own restore does) before its next
   BRPOP on a working connection. What this cannot cover: the worker process dying in the
   same outage, and Redis dying after it persisted the pop but before it sent the reply.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

logger = logging.getLogger(__name__)

_original_connparams = kombu_redis.Channel._connparams  # type: ignore[attr-defined]
_original_append = kombu_redis.QoS.append
_original_brpop_start = kombu_redis.Channel._brpop_start  # type: ignore[attr-defined]

# Messages taken by BRPOP whose ``unacked`` write failed: (payload, exchange, routing key).
_limbo: list[tuple[dict[str, Any], str, str]] = []
_limbo_lock = threading.Lock()


def _connparams(self: Any, asynchronous: bool = False) -> Any:
    if self.connection is None or getattr(self.connection, "client", None) is None:
        raise redis.ConnectionError("kombu channel is closed: its connection went away")
    return _original_connparams(self, asynchronous=asynchronous)


def _append(self: Any, message: Any, delivery_tag: str) -> None:
    try:
        _original_append(self, message, delivery_tag)
    except self.channel.connection_errors:
        info = message.delivery_info
        with _limbo_lock:
            _limbo.append((message._raw, info["exchange"], info["routing_key"]))
        logger.warning(
            "message taken from Redis but not recorded as unacknowledged; kept to requeue",
            extra={"delivery_tag": delivery_tag, "queue": info["routing_key"]},
        )
        raise


def requeue_limbo(channel: Any) -> int:
    """Push kept messages back where BRPOP took them from; returns how many went back."""
    with _limbo_lock:
        if not _limbo:
            return 0
        pending = list(_limbo)
        with channel.conn_or_acquire() as client, client.pipeline() as pipe:
            for payload, exchange, routing_key in pending:
                channel._do_restore_message(payload, exchange, routing_key, pipe)
            pipe.execute()
        del _limbo[: len(pending)]
    logger.warning("requeued messages kept since a failed unacked write", extra={"n": len(pending)})
    return len(pending)


def _brpop_start(self: Any, timeout: Any = None) -> None:
    if _limbo:
        try:
            requeue_limbo(self)
        except self.connection_errors as exc:  # still away: keep them for the next attempt
            logger.warning("requeue of kept messages failed", extra={"error": str(exc)})
    _original_brpop_start(self, timeout)


def apply() -> None:
    kombu_redis.Channel._connparams = _connparams  # type: ignore[attr-defined]
    kombu_redis.QoS.append = _append  # type: ignore[method-assign]
    kombu_redis.Channel._brpop_start = _brpop_start  # type: ignore[attr-defined]
