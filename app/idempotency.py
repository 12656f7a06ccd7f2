"""``Idempotency-Key`` on submissions: one key and body within 24 h = one task, however often sent.

The first request claims the key with ``SET NX`` as *pending*, for a few seconds only, then
writes the task and the key's *done* marker (24 h) in one MULTI/EXEC, on the condition that
its claim still holds (WATCH). So there is no moment at which the task exists and the key does
not say so, and a request that dies between claim and publish blocks its key for
``PENDING_TTL_SECONDS``, not a day. A concurrent duplicate that finds the claim pending waits
for it (longer than the claim lives, so a dead holder's claim lapses and the duplicate takes
over); it never answers 202 with the id of a task whose publish then failed. The same key with
another body is a conflict (409).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from redis.asyncio import Redis as AsyncRedis

from app.queue import EnqueueFailed, Guard, GuardFailed
from worker.core.names import IDEMPOTENCY_KEY
from worker.core.redis_client import REDIS_ERRORS

TTL_SECONDS = 24 * 3600
MAX_KEY_LENGTH = 255
# A publish takes milliseconds; Redis's client timeouts bound a slow one to about 2 s. A claim
# that outlives its holder's publish is safe anyway: the holder's EXEC fails if the key changed.
PENDING_TTL_SECONDS = 5
# How long a duplicate waits for the first request's publish (~1 s when Redis is down).
PENDING_WAIT_SECONDS = PENDING_TTL_SECONDS + 1

T = TypeVar("T")
# Enqueue the task with this id, on the guard's condition and with its writes.
Publish = Callable[[str, Guard], Awaitable[object]]

# KEYS[1] the key's slot; ARGV[1] the claim. Drops the claim only if it is still this one.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


async def _before_publish(call: Awaitable[T]) -> T:
    """A Redis call on the key before the task's write: its failure stored no task (at most a
    pending claim, which lapses by itself)."""
    try:
        return await call
    except redis.RedisError as exc:
        raise EnqueueFailed(exc, stored=False) from exc


class IdempotencyConflict(Exception):
    """The key was used with a different request."""


class IdempotencyKeyInvalid(ValueError):
    pass


@dataclass(frozen=True)
class Submission:
    task_id: str
    replayed: bool  # True when an earlier request with this key created the task


def request_fingerprint(name: str, payload: dict[str, Any], options: dict[str, Any]) -> str:
    canonical = json.dumps(
        [name, payload, options], sort_keys=True, separators=(",", ":"), default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def key_slot(client_id: str, key: str) -> str:
    return IDEMPOTENCY_KEY.format(client=client_id, key=hashlib.sha256(key.encode()).hexdigest())


class IdempotentSubmitter:
    def __init__(self, client: AsyncRedis) -> None:
        self._redis = client
        self._release = client.register_script(_RELEASE)

    async def submit(
        self, client_id: str, key: str, fingerprint: str, enqueue: Publish
    ) -> Submission:
        if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
            raise IdempotencyKeyInvalid(
                f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} printable characters"
            )
        slot = key_slot(client_id, key)
        deadline = time.monotonic() + PENDING_WAIT_SECONDS
        while True:
            task_id = str(uuid.uuid4())
            claim = json.dumps({"state": "pending", "task_id": task_id, "fp": fingerprint})
            claimed = self._redis.set(slot, claim, nx=True, ex=PENDING_TTL_SECONDS)
            if await _before_publish(claimed):
                if await self._publish(slot, claim, task_id, fingerprint, enqueue):
                    return Submission(task_id, replayed=False)
                continue  # the claim lapsed and another request took the key: look again
            raw = await _before_publish(self._redis.get(slot))
            if raw is None:
                continue  # the holder gave up (its publish failed) or died: claim it ourselves
            existing = json.loads(raw)
            if existing["fp"] != fingerprint:
                raise IdempotencyConflict(
                    "Idempotency-Key was already used with a different request"
                )
            if existing["state"] == "done":
                return Submission(existing["task_id"], replayed=True)
            if time.monotonic() > deadline:
                raise IdempotencyConflict("a request with this Idempotency-Key is still in flight")
            await asyncio.sleep(0.01)  # the event loop serves other requests meanwhile

    async def _publish(
        self, slot: str, claim: str, task_id: str, fingerprint: str, enqueue: Publish
    ) -> bool:
        """Enqueue with the done marker in the same transaction; False if the claim lapsed."""
        done = json.dumps({"state": "done", "task_id": task_id, "fp": fingerprint})
        marker = ("set", (slot, done, TTL_SECONDS))  # SET slot done EX TTL (ex is positional)
        guard = Guard(slot, claim.encode(), also=(marker,))
        try:
            await enqueue(task_id, guard)
        except GuardFailed:
            return False
        except Exception as exc:
            cause = exc.cause if isinstance(exc, EnqueueFailed) else exc
            # Free the key for a retry at once, unless Redis did not answer: it would not
            # answer this either (a second timeout before the 503), and the claim lapses on its
            # own. The script frees it only if it is still our claim, not a done marker.
            if not isinstance(cause, REDIS_ERRORS):
                with contextlib.suppress(redis.RedisError):
                    await self._release(keys=[slot], args=[claim])
            raise
        return True
