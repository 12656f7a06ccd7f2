"""Celery's Redis result backend, with one rule added: a finished status is never overwritten.

At-least-once delivery means a message can come back after its task finished (its worker died
before acknowledging). Celery would then store STARTED over SUCCESS; this backend refuses any
write over SUCCESS, FAILURE or REVOKED, atomically, so a status never goes backwards. The first
terminal state wins.
"""

from __future__ import annotations

import os
from typing import Any

from celery import states
from celery.backends.redis import RedisBackend
from celery.exceptions import BackendStoreError
from kombu.utils.encoding import bytes_to_str

# Terminal Celery states; the Lua below lists the same three.
TERMINAL_STATES = frozenset({states.SUCCESS, states.FAILURE, states.REVOKED})

_SET_UNLESS_FINISHED = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, meta = pcall(cjson.decode, current)
  if ok and type(meta) == 'table' and (meta['status'] == 'SUCCESS'
      or meta['status'] == 'FAILURE' or meta['status'] == 'REVOKED') then
    return 0
  end
end
if tonumber(ARGV[2]) > 0 then
  redis.call('SETEX', KEYS[1], ARGV[2], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


class CourierRedisBackend(RedisBackend):
    """Selected by the result backend URL ``worker.core.result_backend:CourierRedisBackend+redis://``."""

    _guarded_set: Any = None

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Celery's version, minus its read-before-write: the script below already refuses to
        overwrite a finished state, atomically, so the extra round trip per state change (a
        large share of a no-op task's cost, make bench) buys nothing."""
        backend: Any = self  # celery-types lacks these internals
        encoded = self.encode_meta(task_id, result, state, traceback, request)
        try:
            backend._set_with_state(self.get_key_for_task(task_id), encoded, state)
        except BackendStoreError as exc:
            raise BackendStoreError(str(exc), state=state, task_id=task_id) from exc  # type: ignore[call-arg]
        return result

    def encode_meta(
        self, task_id: str, result: Any, state: str, traceback: Any = None, request: Any = None
    ) -> bytes | str:
        """The stored value of a state, exactly as Celery would store it."""
        backend: Any = self  # celery-types lacks these internals
        meta = backend._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        meta["task_id"] = bytes_to_str(task_id)
        return self.encode(meta)

    def started_meta(self, task_id: str, request: Any) -> bytes | str:
        """What Celery's ``task_track_started`` stores; written here by the worker's start
        stamp (``TaskRecords.mark_started``), in the round trip it makes anyway."""
        return self.encode_meta(
            task_id, {"pid": os.getpid(), "hostname": request.hostname}, states.STARTED,
            request=request,
        )  # fmt: skip

    def _set(self, key: str | bytes, value: str | bytes, expires: int | None = None) -> None:
        if self._guarded_set is None:
            self._guarded_set = self.client.register_script(_SET_UNLESS_FINISHED)
        ttl = getattr(self, "expires", None) if expires is None else expires
        self._guarded_set(keys=[key], args=[value, int(ttl or 0)])


BACKEND_PATH = f"{__name__}:CourierRedisBackend"


def backend_url(redis_url: str) -> str:
    return f"{BACKEND_PATH}+{redis_url}"
