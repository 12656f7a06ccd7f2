"""Purge a queue and keep every status true: each removed task reads ``revoked`` with a reason.

``celery purge`` deletes the queue's lists and nothing else: the tasks in them keep records that
say ``queued`` until the reconcile fails them as ``MessageLost`` (after the visibility timeout).
Here each batch of messages is taken off its list and, in the same script, each task it names
gets Celery's REVOKED state (what ``AsyncResult.state`` and ``GET /v1/tasks/{id}`` read) and its
record's revoked flag, so no task is ever removed without its status saying so.

Only what waits in the lists is purged: messages a worker already holds (reserved, waiting for
their ``eta``/``countdown``, running) are in kombu's ``unacked`` hash, not in a list; cancel them
one by one (``DELETE /v1/tasks/{id}``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from celery import states
from celery.exceptions import TaskRevokedError
from redis.asyncio import Redis as AsyncRedis

from worker.core.names import CELERY_RESULT_KEY, TASK_RECORD_KEY
from worker.core.queue_stats import priority_lists
from worker.core.result_backend import LUA_STATE_HELPERS

BATCH = 500  # messages per script call: Redis stays responsive while a long queue is purged
_PLACEHOLDER = "courier-purged-task-id"

# KEYS[1] the list. ARGV: batch size, the REVOKED state with the placeholder id (JSON), its
# TTL, record key prefix, result key prefix, the placeholder (quoted, as JSON has it). Takes up
# to a batch off the list; for each message with a task id: record flagged, REVOKED stored
# unless the task already finished. Returns {messages removed, tasks marked revoked}.
_PURGE = (
    LUA_STATE_HELPERS
    + """
local items = redis.call('RPOP', KEYS[1], tonumber(ARGV[1]))
if not items then return {0, 0} end
local marked = 0
local at = string.find(ARGV[2], ARGV[6], 1, true)
for _, raw in ipairs(items) do
  local ok, message = pcall(cjson.decode, raw)
  local headers = ok and type(message) == 'table' and message['headers']
  local id = type(headers) == 'table' and headers['id']
  if at and type(id) == 'string' and id ~= '' then
    local record = ARGV[4] .. id
    if redis.call('EXISTS', record) == 1 then redis.call('HSET', record, 'revoked', '1') end
    local result = ARGV[5] .. id
    local meta = string.sub(ARGV[2], 1, at - 1) .. cjson.encode(id)
      .. string.sub(ARGV[2], at + #ARGV[6])
    if store_state_unless_finished(result, meta, ARGV[3]) then marked = marked + 1 end
  end
end
return {#items, marked}
"""
)


@dataclass(frozen=True)
class Purged:
    queue: str
    removed: int  # messages taken off the queue's lists
    revoked: int  # tasks whose state now reads REVOKED (the others had finished, or no id)


class QueuePurger:
    def __init__(
        self, client: AsyncRedis, backend: Any, result_ttl: int, priority_steps: Sequence[int]
    ) -> None:
        self._redis = client
        self._backend = backend  # Courier's result backend: encodes states as Celery does
        self._ttl = result_ttl
        self._steps = list(priority_steps)
        self._purge = client.register_script(_PURGE)

    async def purge(self, queue: str, reason: str) -> Purged:
        error = self._backend.prepare_exception(TaskRevokedError(reason))
        state = self._backend.encode_meta(_PLACEHOLDER, error, states.REVOKED)
        if isinstance(state, bytes):
            state = state.decode()
        args = [
            BATCH,
            state,
            self._ttl,
            TASK_RECORD_KEY.format(task_id=""),
            CELERY_RESULT_KEY.format(task_id=""),
            json.dumps(_PLACEHOLDER),
        ]
        removed = revoked = 0
        for key in priority_lists(queue, self._steps):
            while True:
                taken, marked = await self._purge(keys=[key], args=args)
                removed, revoked = removed + int(taken), revoked + int(marked)
                if int(taken) < BATCH:
                    break
        return Purged(queue, removed, revoked)
