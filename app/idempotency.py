"""``Idempotency-Key`` on submissions: one key and body within 24 h = one task, however often sent.

The first request claims the key with ``SET NX`` as *pending* and publishes; only then is the
claim marked *done*. A concurrent duplicate that finds the claim pending waits for it, so it
never answers 202 with the id of a task whose publish then failed (the claim is dropped and the
duplicate retries the claim itself). The same key with another body is a conflict (409).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from worker.core.names import IDEMPOTENCY_KEY

TTL_SECONDS = 24 * 3600
MAX_KEY_LENGTH = 255
# How long a duplicate waits for the first request's publish (~1 s when Redis is down).
PENDING_WAIT_SECONDS = 5.0


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


class IdempotentSubmitter:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def submit(
        self, client_id: str, key: str, fingerprint: str, enqueue: Callable[[str], None]
    ) -> Submission:
        if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
            raise IdempotencyKeyInvalid(
                f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} printable characters"
            )
        slot = IDEMPOTENCY_KEY.format(
            client=client_id, key=hashlib.sha256(key.encode()).hexdigest()
        )
        deadline = time.monotonic() + PENDING_WAIT_SECONDS
        while True:
            task_id = str(uuid.uuid4())
            claim = json.dumps({"state": "pending", "task_id": task_id, "fp": fingerprint})
            if self._redis.set(slot, claim, nx=True, ex=TTL_SECONDS):
                return self._publish(slot, task_id, fingerprint, enqueue)
            raw = self._redis.get(slot)
            if raw is None:
                continue  # the holder gave up (its publish failed): claim it ourselves
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
        self, slot: str, task_id: str, fingerprint: str, enqueue: Callable[[str], None]
    ) -> Submission:
        try:
            enqueue(task_id)
        except Exception:
            self._redis.delete(slot)
            raise
        done = json.dumps({"state": "done", "task_id": task_id, "fp": fingerprint})
        self._redis.set(slot, done, xx=True, keepttl=True)
        return Submission(task_id, replayed=False)
