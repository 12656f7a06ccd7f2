"""Dead letters: messages no worker can run, kept aside with the reason, never blocking a queue.

Courier's transport hands every fetched task message to ``DeadLetterScreen`` before kombu and
Celery see it (``worker/transport/channel.py``). A message that fails ``envelope.check`` is
moved, in one script, out of kombu's ``unacked`` records and into the dead-letter store, and
the task it names (when its id is readable) gets a ``DeadLettered`` failure as its stored
state, so its status and a stock client's ``AsyncResult.get()`` say what happened instead of
waiting forever. The worker goes on with the next message.

The store is bounded twice (``COURIER_DEAD_LETTER_MAX`` entries, the oldest dropped first, and
``COURIER_DEAD_LETTER_MAX_BYTES`` of raw message each), so a flood of garbage cannot fill
Redis. The API lists, requeues and deletes them (``/v1/dead-letters``).

The scripts carry ``allow-oom``: a worker draining a full Redis must still be able to set a
poison message aside (a few hundred bytes, while the ``unacked`` entry it replaces is freed),
or the message would come back after every visibility timeout. Requires Redis 7.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections.abc import Callable, Collection
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from celery.utils.dispatch import Signal

from worker.core import envelope
from worker.core.names import (
    CELERY_RESULT_KEY,
    DEAD_LETTERS_INDEX_KEY,
    DEAD_LETTERS_KEY,
    DEAD_LETTERS_RAW_KEY,
    KOMBU_UNACKED_KEY,
)
from worker.core.redis_calls import Call, Lua
from worker.core.redis_client import ALLOW_OOM, NO_WRITES
from worker.core.result_backend import LUA_STATE_HELPERS

logger = logging.getLogger("courier.dead_letters")

# Sent by the consumer for each message set aside (the worker's signals count it):
# ``letter`` (DeadLetter), ``routing_key`` (the producer's, unchecked), ``tasks``.
message_dead_lettered = Signal(name="message_dead_lettered")

UNACKED_INDEX_KEY = KOMBU_UNACKED_KEY + "_index"
# What the screen is given to reach Redis: a context giving a client (the channel's
# ``conn_or_acquire``), entered only when a message is set aside.
Connect = Callable[[], AbstractContextManager[redis.Redis]]
STORE_KEYS = [DEAD_LETTERS_KEY, DEAD_LETTERS_RAW_KEY, DEAD_LETTERS_INDEX_KEY]

# KEYS: the three store keys, unacked, unacked_index, the task's result ('' key unused).
# ARGV: id, description (JSON), raw, now, max entries, delivery tag ('' none), failure state
# ('' none), its TTL. Returns the number of old entries dropped to stay within the bound.
_ADD = Lua(
    ALLOW_OOM
    + LUA_STATE_HELPERS
    + """
if ARGV[6] ~= '' then
  redis.call('HDEL', KEYS[4], ARGV[6])
  redis.call('ZREM', KEYS[5], ARGV[6])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
local excess = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[5])
if excess > 0 then
  local old = redis.call('ZRANGE', KEYS[3], 0, excess - 1)
  redis.call('HDEL', KEYS[1], unpack(old))
  redis.call('HDEL', KEYS[2], unpack(old))
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, excess - 1)
else
  excess = 0
end
if ARGV[7] ~= '' then store_state_unless_finished(KEYS[6], ARGV[7], ARGV[8]) end
return excess
"""
)

# KEYS: the three store keys, the list to push onto, the task's result. ARGV: id. Pushes the raw
# message where a producer would (LPUSH: the back of the line) and clears the DeadLettered
# failure stored for it, so the task can run. Returns 1, or 0 when the entry is gone.
_REQUEUE = Lua(
    ALLOW_OOM
    + """
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if not raw or redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[4], raw)
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
local current = redis.call('GET', KEYS[5])
if current then
  local ok, meta = pcall(cjson.decode, current)
  local result = ok and type(meta) == 'table' and meta['result']
  if type(result) == 'table' and result['exc_type'] == 'DeadLettered' then
    redis.call('DEL', KEYS[5])
  end
end
return 1
"""
)

# KEYS: the three store keys. ARGV: id. Returns 1 when it was there.
_DELETE = Lua(
    ALLOW_OOM
    + """
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return redis.call('HDEL', KEYS[1], ARGV[1])
"""
)

# KEYS: the three store keys. ARGV: the first and last rank, newest first. Returns {the total,
# the descriptions, the raw messages} of the entries in that range, read in one atomic step (a
# full Redis still runs it: it only reads).
_LIST = Lua(
    NO_WRITES
    + """
local ids = redis.call('ZREVRANGE', KEYS[3], ARGV[1], ARGV[2])
local total = redis.call('ZCARD', KEYS[3])
if #ids == 0 then return {total, {}, {}} end
return {total, redis.call('HMGET', KEYS[1], unpack(ids)), redis.call('HMGET', KEYS[2], unpack(ids))}
"""
)


@dataclass(frozen=True)
class DeadLetter:
    id: str
    reason: str  # one of envelope.REASONS
    detail: str
    queue: str
    list: str  # the Redis list it was taken from (a priority sub-list, or the queue's own)
    task: str | None
    task_id: str | None
    dead_lettered_at: float
    size: int  # bytes of the raw message
    truncated: bool  # only the first COURIER_DEAD_LETTER_MAX_BYTES were kept
    raw: bytes = b""

    @property
    def requeueable(self) -> bool:
        return not self.truncated

    def describe(self) -> dict[str, Any]:
        """The JSON the API answers: the raw message as text when it is UTF-8, else base64."""
        try:
            raw, encoding = self.raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            raw, encoding = base64.b64encode(self.raw).decode(), "base64"
        return {
            "id": self.id,
            "reason": self.reason,
            "detail": self.detail,
            "queue": self.queue,
            "task": self.task,
            "task_id": self.task_id,
            "dead_lettered_at": datetime.fromtimestamp(self.dead_lettered_at, UTC).isoformat(),
            "size": self.size,
            "truncated": self.truncated,
            "raw": raw,
            "raw_encoding": encoding,
        }


def _text(value: Any, limit: int = 200) -> str | None:
    return value[:limit] if isinstance(value, str) else None


class DeadLetterCalls:
    """The store: what each operation sends and how its reply reads (``redis_calls``), run on
    the worker's blocking client (setting a message aside) or the API's asyncio one."""

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes

    def add(
        self,
        raw: bytes,
        unfit: envelope.Unfit,
        queue: str,
        list_key: str,
        *,
        delivery_tag: str | None = None,
        failure: Callable[[str, str], bytes | str] | None = None,
        result_ttl: int = 0,
    ) -> Call[DeadLetter]:
        """Set ``raw`` aside; in the same step drop its ``unacked`` record (``delivery_tag``)
        and, with ``failure(task_id, detail)``, store the task's failure."""
        headers = unfit.headers
        task_id = _text(headers.get("id"), 255)
        letter = DeadLetter(
            id=uuid.uuid4().hex,
            reason=unfit.reason,
            detail=unfit.detail[:500],
            queue=queue,
            list=list_key,
            task=_text(headers.get("task")),
            task_id=task_id,
            dead_lettered_at=time.time(),
            size=len(raw),
            truncated=len(raw) > self.max_bytes,
        )
        description = {k: v for k, v in letter.__dict__.items() if k != "raw"}
        state = failure(task_id, letter.detail) if failure is not None and task_id else ""
        result_key = CELERY_RESULT_KEY.format(task_id=task_id or "")
        keys = [*STORE_KEYS, KOMBU_UNACKED_KEY, UNACKED_INDEX_KEY, result_key]
        args = [
            *(letter.id, json.dumps(description), raw[: self.max_bytes]),
            *(letter.dead_lettered_at, self.max_count, delivery_tag or "", state, result_ttl),
        ]
        return Call(lambda _: letter, _ADD, keys, args)

    @staticmethod
    def list(limit: int, offset: int = 0) -> Call[tuple[int, list[DeadLetter]]]:
        """The total, and up to ``limit`` entries newest first from ``offset``."""

        def parse(reply: Any) -> tuple[int, list[DeadLetter]]:
            total, descriptions, raws = reply
            pairs = zip(descriptions, raws, strict=True)
            return int(total), [_parse(d, r) for d, r in pairs if d is not None]

        return Call(parse, _LIST, STORE_KEYS, [offset, offset + limit - 1])

    @staticmethod
    def get(letter_id: str) -> Call[DeadLetter | None]:
        def parse(reply: Any) -> DeadLetter | None:
            description, raw = reply
            return None if description is None else _parse(description, raw)

        commands = [
            ("hget", (DEAD_LETTERS_KEY, letter_id)),
            ("hget", (DEAD_LETTERS_RAW_KEY, letter_id)),
        ]
        return Call(parse, commands=commands)

    @staticmethod
    def requeue(letter: DeadLetter) -> Call[bool]:
        """Push it back onto the list it came from; False when it is gone meanwhile."""
        result_key = CELERY_RESULT_KEY.format(task_id=letter.task_id or "")
        return Call(bool, _REQUEUE, [*STORE_KEYS, letter.list, result_key], [letter.id])

    @staticmethod
    def delete(letter_id: str) -> Call[bool]:
        return Call(bool, _DELETE, STORE_KEYS, [letter_id])


def _parse(description: bytes, raw: bytes | None) -> DeadLetter:
    return DeadLetter(**json.loads(description), raw=raw or b"")


class DeadLetterScreen:
    """The transport's ``message_screen``: the envelope to deliver, or None when set aside.

    ``tasks()``: the task names this worker runs (read at first use: Celery's registry is
    complete once the app is finalized); ``failure(task_id, detail)``: the encoded
    FAILURE state for a dead-lettered task (the result backend's encoding).
    """

    def __init__(
        self,
        max_count: int,
        max_bytes: int,
        tasks: Callable[[], Collection[str]],
        failure: Callable[[str, str], bytes | str] | None = None,
        result_ttl: int = 0,
    ) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._tasks = tasks
        self._task_names: frozenset[str] | None = None
        self.failure = failure
        self.result_ttl = result_ttl
        self._store = DeadLetterCalls(max_count, max_bytes)

    @property
    def tasks(self) -> frozenset[str]:
        if self._task_names is None:
            self._task_names = frozenset(self._tasks())
        return self._task_names

    def __call__(
        self,
        connect: Connect,
        raw: bytes,
        queue: str,
        *,
        source: str | None = None,
        delivery_tag: str | None = None,
    ) -> envelope.Checked | None:
        """``connect()``: a context giving a Redis client, entered only to set a message aside
        (the consumer's per-message path makes no client for a well-formed one)."""
        try:
            return envelope.check(raw, self.tasks)
        except envelope.Unfit as unfit:
            self._set_aside(connect, raw, queue, source or queue, delivery_tag, unfit)
        except Exception as exc:  # a gap in the check must not be what stops the worker
            logger.exception("message check failed; dead-lettering the message")
            detail = f"the message could not be checked ({type(exc).__name__}: {exc})"[:300]
            unchecked = envelope.Unfit(envelope.ENVELOPE, detail)
            self._set_aside(connect, raw, queue, source or queue, delivery_tag, unchecked)
        return None

    def _set_aside(
        self,
        connect: Connect,
        raw: bytes,
        queue: str,
        list_key: str,
        delivery_tag: str | None,
        unfit: envelope.Unfit,
    ) -> None:
        call = self._store.add(
            raw, unfit, queue, list_key, delivery_tag=delivery_tag, failure=self.failure,
            result_ttl=self.result_ttl,
        )  # fmt: skip
        with connect() as client:
            letter = call.run(client)
        logger.error(
            "message dead-lettered: %s",
            unfit.detail,
            extra={
                "dead_letter_id": letter.id,
                "reason": unfit.reason,
                "queue": queue,
                "task": letter.task,
                "task_id": letter.task_id,
            },
        )
        message_dead_lettered.send(
            sender=self,
            letter=letter,
            routing_key=unfit.routing_key,
            tasks=self.tasks,
        )
