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

import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from app.queue import Guard, GuardFailed
from worker.core.names import IDEMPOTENCY_KEY
from worker.core.redis_client import REDIS_ERRORS

TTL_SECONDS = 24 * 3600
MAX_KEY_LENGTH = 255
# A publish takes milliseconds; Redis's client timeouts bound a slow one to about 2 s. A claim
# that outlives its holder's publish is safe anyway: the holder's EXEC fails if the key changed.
PENDING_TTL_SECONDS = 5
# How long a duplicate waits for the first request's publish (~1 s when Redis is down).
PENDING_WAIT_SECONDS = PENDING_TTL_SECONDS + 1

# Enqueue the task with this id, on the guard's condition and with its writes.
Publish = Callable[[str, Guard], object]

# KEYS[1] the key's slot; ARGV[1] the claim. Drops the claim only if it is still this one.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


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
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._release = client.register_script(_RELEASE)

    def submit(self, client_id: str, key: str, fingerprint: str, enqueue: Publish) -> Submission:
        if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
            raise IdempotencyKeyInvalid(
                f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} printable characters"
            )
        slot = key_slot(client_id, key)
        deadline = time.monotonic() + PENDING_WAIT_SECONDS
        while True:
            task_id = str(uuid.uuid4())
            claim = json.dumps({"state": "pending", "task_id": task_id, "fp": fingerprint})
            if self._redis.set(slot, claim, nx=True, ex=PENDING_TTL_SECONDS):
                if self._publish(slot, claim, task_id, fingerprint, enqueue):
                    return Submission(task_id, replayed=False)
                continue  # the claim lapsed and another request took the key: look again
            raw = self._redis.get(slot)
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
            time.sleep(0.01)

    def _publish(
        self, slot: str, claim: str, task_id: str, fingerprint: str, enqueue: Publish
    ) -> bool:
        """Enqueue with the done marker in the same transaction; False if the claim lapsed."""
        done = json.dumps({"state": "done", "task_id": task_id, "fp": fingerprint})
        marker = ("set", (slot, done, TTL_SECONDS))  # SET slot done EX TTL (ex is positional)
        guard = Guard(slot, claim.encode(), also=(marker,))
        try:
            enqueue(task_id, guard)
        except GuardFailed:
            return False
        except Exception:
            # Free the key for a retry at once; if Redis is away the claim lapses on its own.
            with contextlib.suppress(*REDIS_ERRORS):
                self._release(keys=[slot], args=[claim])
            raise
        return True
