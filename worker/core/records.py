"""The record of each issued task id, kept as long as its result.

Celery reports PENDING for any id, issued or not; this record is what lets the API answer 404
for ids it never issued, and it carries the timestamps Celery does not keep (enqueued, started)
and the cancellation flag a worker started after the revoke broadcast would otherwise miss.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

import redis

from worker.core.names import CELERY_RESULT_KEY, TASK_RECORD_KEY


@dataclass(frozen=True)
class TaskRecord:
    task_id: str
    name: str
    queue: str
    enqueued_at: float
    started_at: float | None
    revoked: bool
    trace_id: str | None = None
    executions: int = 0  # attempts started, retries and at-least-once redeliveries included


# KEYS: the record, Celery's result. ARGV: now, the STARTED state to store ('' for none), its
# TTL. Returns {revoked flag, 1 when the task already finished}.
_MARK_STARTED = """
local finished = 0
local result = redis.call('GET', KEYS[2])
if result then
  local ok, meta = pcall(cjson.decode, result)
  if ok and type(meta) == 'table' and (meta['status'] == 'SUCCESS'
      or meta['status'] == 'FAILURE' or meta['status'] == 'REVOKED') then
    finished = 1
  end
end
if finished == 0 then
  if redis.call('EXISTS', KEYS[1]) == 1 then
    redis.call('HSET', KEYS[1], 'started_at', ARGV[1])
    redis.call('HINCRBY', KEYS[1], 'executions', 1)
  end
  if ARGV[2] ~= '' then
    if tonumber(ARGV[3]) > 0 then
      redis.call('SETEX', KEYS[2], ARGV[3], ARGV[2])
    else
      redis.call('SET', KEYS[2], ARGV[2])
    end
    redis.call('PUBLISH', KEYS[2], ARGV[2])
  end
end
return {redis.call('HGET', KEYS[1], 'revoked') or '', finished}
"""


@dataclass(frozen=True)
class StartCheck:
    revoked: bool  # cancelled through the API while it waited
    finished: bool  # a redelivered duplicate of a task that already finished


def _key(task_id: str) -> str:
    return TASK_RECORD_KEY.format(task_id=task_id)


class TaskRecords:
    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self._redis = client
        self._ttl = ttl
        self._mark_started = client.register_script(_MARK_STARTED)

    @property
    def client(self) -> redis.Redis:
        return self._redis

    def create_commands(
        self, task_id: str, name: str, queue: str, trace_id: str | None = None
    ) -> list[tuple[str, tuple[Any, ...]]]:
        """The writes that create a record, for the caller's MULTI (with the task's message)."""
        fields: dict[str, str | float] = {"name": name, "queue": queue, "enqueued_at": time.time()}
        if trace_id:
            fields["trace_id"] = trace_id
        key = _key(task_id)
        return [("hset", (key, None, None, fields)), ("expire", (key, self._ttl))]

    def create(self, task_id: str, name: str, queue: str, trace_id: str | None = None) -> None:
        pipe = self._redis.pipeline(transaction=True)
        for command, args in self.create_commands(task_id, name, queue, trace_id):
            getattr(pipe, command)(*args)
        pipe.execute()

    def delete(self, task_id: str) -> None:
        self._redis.delete(_key(task_id))

    def get(self, task_id: str) -> TaskRecord | None:
        return self.parse(task_id, cast(dict[bytes, bytes], self._redis.hgetall(_key(task_id))))

    def get_with_result(self, task_id: str) -> tuple[TaskRecord | None, bytes | None]:
        """The record and Celery's stored state, read in one MULTI/EXEC: a worker writes both
        in one script, so two separate reads could see STARTED without its start time."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.hgetall(_key(task_id))
        pipe.get(CELERY_RESULT_KEY.format(task_id=task_id))
        raw, result = pipe.execute()
        return self.parse(task_id, raw), result

    @staticmethod
    def parse(task_id: str, raw: dict[bytes, bytes]) -> TaskRecord | None:
        if not raw:
            return None
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        started = fields.get("started_at")
        return TaskRecord(
            task_id=task_id,
            name=fields.get("name", ""),
            queue=fields.get("queue", ""),
            enqueued_at=float(fields.get("enqueued_at", 0.0)),
            started_at=float(started) if started else None,
            revoked=fields.get("revoked") == "1",
            trace_id=fields.get("trace_id"),
            executions=int(fields.get("executions", 0)),
        )

    def mark_started(self, task_id: str, started_state: bytes | str = b"") -> StartCheck:
        """Stamp the start of an attempt, store Celery's STARTED state (``started_state``, kept
        as long as records), and say whether the attempt should run at all.

        A script keeps it to one round trip, never recreates an expired record without a TTL
        and never puts STARTED over a finished state.
        """
        keys = [_key(task_id), CELERY_RESULT_KEY.format(task_id=task_id)]
        args = [time.time(), started_state, self._ttl]
        revoked, finished = self._mark_started(keys=keys, args=args)
        return StartCheck(revoked=revoked == b"1", finished=bool(finished))

    def mark_revoked(self, task_id: str) -> None:
        self._redis.hset(_key(task_id), "revoked", "1")
