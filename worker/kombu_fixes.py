"""One targeted work-around for kombu's Redis transport, applied in worker processes.

When Redis drops the connection, Celery's consumer closes its channel and reconnects on a new
one. Anything that still touches the old channel afterwards (pushing its delivered messages back
on close, acknowledging a task that finished during the outage) makes kombu build a connection
pool from a transport already detached from its connection, which raises
``AttributeError: 'NoneType' object has no attribute 'hostname'`` (or ``'client'``). Celery
takes that for an unrecoverable error and the worker hangs without consuming (reproduced here
by the Redis-restart chaos test; kombu issues 582, 970, celery 10205).

Raising a connection error instead puts kombu and Celery on their normal recovery path: the
error is logged and ignored, the message stays in kombu's ``unacked`` hash and the periodic sweep
restores it after the visibility timeout (a finished task is then skipped as a duplicate).
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis

_original_connparams = kombu_redis.Channel._connparams  # type: ignore[attr-defined]


def _connparams(self: Any, asynchronous: bool = False) -> Any:
    if self.connection is None or getattr(self.connection, "client", None) is None:
        raise redis.ConnectionError("kombu channel is closed: its connection went away")
    return _original_connparams(self, asynchronous=asynchronous)


def apply() -> None:
    kombu_redis.Channel._connparams = _connparams  # type: ignore[attr-defined]
