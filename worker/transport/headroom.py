"""The consumer's writes that a full Redis (``maxmemory`` reached, ``noeviction``) must accept.

Redis 7 refuses, while over maxmemory, every command that may grow memory (SET, HSET, SADD,
LPUSH, BLMOVE...) and every command queued into MULTI, reads included; it still runs deletions
(ZREM, HDEL), PUBLISH, and Lua scripts flagged ``allow-oom`` (``redis_client.ALLOW_OOM``).
Before, each of these stopped a worker on a full Redis (``Unrecoverable error:
OutOfMemoryError``) or lost a task; what the channel (``channel.py``) does instead:

- *a retry's message*: Celery's ``Task.retry`` turns a refused publish into
  ``Reject(requeue=False)``: the message is acknowledged and the task lost. Published inside
  ``past_maxmemory()`` (the runner does it for retries), the push is an allow-oom script: it
  replaces the message acknowledged right after it, so it grows memory by about nothing.
- *queue declaration*: kombu's LLENs in a MULTI are sent as a plain pipeline.
- *queue bindings*: the SADDs a starting worker sends for its queues and control queue, and
  the periodic TTL refresh of the control queue's bindings, are retried as the same writes (a
  few bytes, rewritten in place) in an allow-oom script.
- *the restore sweep* takes a mutex (SET NX) and moves abandoned messages back in a MULTI: both
  refused, it logs a warning and runs again at its next interval. Abandoned messages (a worker
  died while Redis was full) stay in ``unacked``, not lost, until Redis is below maxmemory.
- *the blocking peek* (``BLMOVE list list``) is refused at once, empty list or not: the
  channel takes the refusal for "something may be waiting" and fetches (``FETCH`` still runs:
  it is ``allow-oom``, and its writes record what its RPOP took); it peeks again only after
  ``REFUSED_PEEK_PAUSE_SECONDS``, so an idle worker polls while Redis is full instead of
  spinning, and a busy one, whose fetches return messages, never peeks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

from worker.core.redis_client import ALLOW_OOM, refusal_code

__all__ = [
    "ALLOW_OOM",
    "BIND",
    "PUSH",
    "REFUSED_PEEK_PAUSE_SECONDS",
    "is_full",
    "past_maxmemory",
    "publishing_past_maxmemory",
]

REFUSED_PEEK_PAUSE_SECONDS = 0.5
_PAST_MAXMEMORY: ContextVar[bool] = ContextVar("courier_publish_past_maxmemory", default=False)

# KEYS[1] the list; ARGV[1] the message (kombu's ``_put``, without queue expiry: Courier's
# queues have none).
PUSH = ALLOW_OOM + "return redis.call('LPUSH', KEYS[1], ARGV[1])\n"
# KEYS the binding sets; ARGV[1] the member (kombu's ``_queue_bind``).
BIND = ALLOW_OOM + "for i = 1, #KEYS do redis.call('SADD', KEYS[i], ARGV[1]) end\n"


@contextlib.contextmanager
def past_maxmemory() -> Iterator[None]:
    """Messages published in this block are pushed even when Redis is full (retries only)."""
    token = _PAST_MAXMEMORY.set(True)
    try:
        yield
    finally:
        _PAST_MAXMEMORY.reset(token)


def publishing_past_maxmemory() -> bool:
    return _PAST_MAXMEMORY.get()


def is_full(exc: BaseException) -> bool:
    """Redis refused a write because it is over maxmemory."""
    return refusal_code(exc) == "OOM"
