"""The record of each issued task id, kept as long as its result.

Celery reports PENDING for any id, issued or not; this record is what lets the API answer 404
for ids it never issued, and it carries the timestamps Celery does not keep (enqueued, started)
and the cancellation flag a worker started after the revoke broadcast would otherwise miss.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis

from worker.core.names import CELERY_RESULT_KEY, TASK_RECORD_KEY
from worker.core.redis_calls import Call, Lua
from worker.core.redis_client import ALLOW_OOM, NO_WRITES, Command
from worker.core.result_backend import LUA_STATE_HELPERS


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


# Lua (after LUA_STATE_HELPERS): the start stamp of one attempt, shared by the worker's
# ``_MARK_STARTED`` below and the transport's fetch (``worker/transport/scripts.py``), which
# stamps a task in the same script that takes its message. Arguments: the record's key,
# Celery's result key, now, the STARTED state to store ('' for none), its TTL, the task's name
# and queue ('' for none). Returns the revoked flag ('1' or '') and whether the task already
# finished. A task without a record (sent by another producer: a stock Celery client, Flower,
# a chain's next step) gets one here, with the usual TTL, so its status reads true; its
# enqueue time is unknown and reads as its start. One HMGET says whether the record exists
# (every record has a name), whether it was revoked, how many attempts started and when it was
# enqueued, so one HSET writes the start and the count; a revoked task is not stamped at all.
# ``now`` is the worker's clock, read before its request reached Redis (and maybe skewed from
# the producer's): a start earlier than the enqueue time is raised to it, so a status never
# reads started before it was enqueued. STARTED is stored
# without Celery's PUBLISH: a stock client's AsyncResult.get() waits for a ready state only (it
# reads STARTED from the key, as .state does), Flower follows events; only a
# get(on_message=...) callback no longer sees STARTED go by.
STAMP_START_LUA = """
local function stamp_start(record, result, now, started, ttl, name, queue)
  local fields = redis.call('HMGET', record, 'name', 'revoked', 'executions', 'enqueued_at')
  local enqueued = tonumber(fields[4])
  if enqueued and enqueued > tonumber(now) then now = fields[4] end
  -- A task revoked while queued never starts: no start time, no attempt, no STARTED (the
  -- worker stores REVOKED next), so no reader sees it started for a moment.
  local finished
  if fields[2] == '1' or started == '' then
    finished = is_finished(result)
  else
    finished = not replace_unless_finished(result, started, ttl)
  end
  if not finished and fields[2] ~= '1' then
    if fields[1] then
      redis.call('HSET', record, 'started_at', now,
        'executions', (tonumber(fields[3]) or 0) + 1)
    elseif name ~= '' then
      redis.call('HSET', record, 'name', name, 'queue', queue, 'enqueued_at', now,
        'started_at', now, 'executions', 1)
      redis.call('EXPIRE', record, ttl)
    end
  end
  return fields[2] or '', finished
end
"""

# KEYS: the record, Celery's result. ARGV: now, the STARTED state to store ('' for none), its
# TTL, the task's name and queue ('' for none). Returns {revoked flag, 1 when the task already
# finished}. allow-oom: a full Redis must still let an accepted task start, or the queue could
# never drain (``redis_client.ALLOW_OOM``).
_MARK_STARTED = Lua(
    ALLOW_OOM
    + LUA_STATE_HELPERS
    + STAMP_START_LUA
    + """
local revoked, finished = stamp_start(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4],
  ARGV[5])
return {revoked, finished and 1 or 0}
"""
)

# KEYS: the record, Celery's result. Returns {the record's fields and values, the stored state}.
# A script, not MULTI/EXEC: both are atomic, but a full Redis refuses every command queued into
# a transaction, reads included, and the status of a task must stay readable while it drains.
_GET_WITH_RESULT = Lua(
    NO_WRITES
    + """
return {redis.call('HGETALL', KEYS[1]), redis.call('GET', KEYS[2])}
"""
)


# KEYS: the record. Flags it revoked only if it still exists: an HSET on an expired record
# would recreate it without a TTL (a key kept forever). Returns 1 when flagged.
_MARK_REVOKED = Lua(
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'revoked', '1')
return 1
"""
)


# KEYS: the record, Celery's result. ARGV: the FAILURE state to store, its TTL. Stores it only
# while the task is still queued (record there, not revoked, no state stored by any worker):
# a message that turns up after all is never failed under its worker. Returns 1 when stored.
_MARK_LOST = Lua(
    LUA_STATE_HELPERS
    + """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HGET', KEYS[1], 'revoked') == '1' then
  return 0
end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
store_state(KEYS[2], ARGV[1], ARGV[2])
return 1
"""
)


@dataclass(frozen=True)
class StartCheck:
    revoked: bool  # cancelled through the API while it waited
    finished: bool  # a redelivered duplicate of a task that already finished


def _key(task_id: str) -> str:
    return TASK_RECORD_KEY.format(task_id=task_id)


def _parse(task_id: str, raw: dict[bytes, bytes]) -> TaskRecord | None:
    """A record's hash as read (``HGETALL``); None for a missing one."""
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


class RecordCalls:
    """What each operation on a record sends and how its reply reads (``redis_calls``): the
    worker's ``TaskRecords`` runs these on its blocking client, the API on its asyncio one."""

    def __init__(self, ttl: int) -> None:
        self.ttl = ttl

    def create_commands(
        self, task_id: str, name: str, queue: str, trace_id: str | None = None
    ) -> list[Command]:
        """The writes that create a record, for the caller's MULTI (with the task's message)."""
        fields: dict[str, str | float] = {"name": name, "queue": queue, "enqueued_at": time.time()}
        if trace_id:
            fields["trace_id"] = trace_id
        key = _key(task_id)
        return [("hset", (key, None, None, fields)), ("expire", (key, self.ttl))]

    @staticmethod
    def get_with_result(task_id: str) -> Call[tuple[TaskRecord | None, bytes | None]]:
        """The record and Celery's stored state, read in one atomic step: a worker writes both
        in one script, so two separate reads could see STARTED without its start time."""

        def parse(reply: Any) -> tuple[TaskRecord | None, bytes | None]:
            flat, result = reply
            raw = dict(zip(flat[::2], flat[1::2], strict=True))
            return _parse(task_id, raw), result

        keys = [_key(task_id), CELERY_RESULT_KEY.format(task_id=task_id)]
        return Call(parse, _GET_WITH_RESULT, keys)

    def mark_started(
        self, task_id: str, started_state: bytes | str = b"", name: str = "", queue: str = ""
    ) -> Call[StartCheck]:
        """See ``TaskRecords.mark_started``."""

        def parse(reply: Any) -> StartCheck:
            revoked, finished = reply
            return StartCheck(revoked=revoked == b"1", finished=bool(finished))

        keys = [_key(task_id), CELERY_RESULT_KEY.format(task_id=task_id)]
        args = [time.time(), started_state, self.ttl, name, queue]
        return Call(parse, _MARK_STARTED, keys, args)

    def mark_lost(self, task_id: str, failure_state: bytes | str) -> Call[bool]:
        """See ``TaskRecords.mark_lost``."""
        keys = [_key(task_id), CELERY_RESULT_KEY.format(task_id=task_id)]
        return Call(bool, _MARK_LOST, keys, [failure_state, self.ttl])

    @staticmethod
    def mark_revoked(task_id: str) -> Call[bool]:
        """Flag the record revoked, keeping its TTL; False when it no longer exists."""
        return Call(bool, _MARK_REVOKED, [_key(task_id)])


class TaskRecords:
    """The records on a blocking client (the worker's)."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self._redis = client
        self.calls = RecordCalls(ttl)

    @property
    def client(self) -> redis.Redis:
        return self._redis

    def get_with_result(self, task_id: str) -> tuple[TaskRecord | None, bytes | None]:
        return self.calls.get_with_result(task_id).run(self._redis)

    def mark_started(
        self, task_id: str, started_state: bytes | str = b"", name: str = "", queue: str = ""
    ) -> StartCheck:
        """Stamp the start of an attempt, store Celery's STARTED state (``started_state``, kept
        as long as records), and say whether the attempt should run at all.

        A script keeps it to one round trip, never leaves a record without a TTL and never
        puts STARTED over a finished state; with ``name``, a missing record is created.
        """
        return self.calls.mark_started(task_id, started_state, name, queue).run(self._redis)

    def mark_lost(self, task_id: str, failure_state: bytes | str) -> bool:
        """Store ``failure_state`` (Celery's FAILURE, encoded) for a task still queued; False
        when a worker stored a state meanwhile, or the task was revoked or expired."""
        return self.calls.mark_lost(task_id, failure_state).run(self._redis)

    def mark_revoked(self, task_id: str) -> bool:
        return self.calls.mark_revoked(task_id).run(self._redis)
