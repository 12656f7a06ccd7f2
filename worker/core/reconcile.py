"""Queued tasks whose message vanished from Redis: found, failed with ``MessageLost``, counted.

A task is ``queued`` from its 202 until a worker stores STARTED, and all that time its message
is in one of its queue's lists (one per priority) or, once a worker fetched it, in kombu's
``unacked`` hash. ``celery purge``, a deleted list or a message lost with a dying worker leave
a record that says ``queued`` for the whole result TTL, with nothing left to run it.

A record is only suspected once it is older than ``stale_after`` seconds: the visibility timeout
(the longest countdown the API accepts, and when kombu restores an abandoned message) plus one
restore sweep. Its message is then sought twice, ``LIMBO_GRACE_SECONDS`` apart (kombu takes a
message off its list before it records it as unacknowledged: the second look catches one caught
in between), and only a task still without any stored state is failed, atomically.

Work per run is bounded: at most ``MAX_SCANS_PER_RUN`` SCAN calls over the records (the cursor
carries on at the next run), ``MAX_STALE_PER_RUN`` suspects, and a queue longer than
``MAX_MESSAGES_SEARCHED`` is not searched (its suspects wait for a run when it is shorter).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from celery import states

from worker.core import metrics
from worker.core.errors import MessageLost
from worker.core.names import (
    CELERY_RESULT_KEY,
    KOMBU_UNACKED_KEY,
    RECONCILE_CURSOR_KEY,
    RECONCILE_LAST_RUN_KEY,
    TASK_RECORD_KEY,
    TASK_RECORD_PATTERN,
)
from worker.core.queue_stats import priority_lists
from worker.core.records import TaskRecords
from worker.core.result_backend import CourierRedisBackend

logger = logging.getLogger(__name__)

SCAN_BATCH = 1000
MAX_SCANS_PER_RUN = 100
MAX_STALE_PER_RUN = 1000
MAX_MESSAGES_SEARCHED = 10_000
LIMBO_GRACE_SECONDS = 1.0
# The SCAN cursor outlives a run by this much at most: a pass left unfinished for longer restarts.
_CURSOR_TTL = 7 * 86400

# KEYS[1]: kombu's unacked hash; then each queue's lists, ARGV[2] of them per queue.
# ARGV[1]: most messages searched in unacked and per queue; ARGV[3..]: the task ids sought.
# Returns {ids found, 1-based indexes of the queues too long to search}; {{}, {0}} when unacked
# is too long (then nothing can be proven). Inside Redis: one consistent view, no bodies sent.
_FIND_MESSAGES = """
local limit, per_queue = tonumber(ARGV[1]), tonumber(ARGV[2])
local sought, found, too_long = {}, {}, {}
for i = 3, #ARGV do sought[ARGV[i]] = true end
local function look(raw, unacked)
  local ok, message = pcall(cjson.decode, raw)
  if not ok or type(message) ~= 'table' then return end
  if unacked then message = message[1] end
  if type(message) == 'table' and type(message['headers']) == 'table' then
    local id = message['headers']['id']
    if type(id) == 'string' and sought[id] then
      table.insert(found, id)
      sought[id] = nil
    end
  end
end
if redis.call('HLEN', KEYS[1]) > limit then return {{}, {0}} end
for _, raw in ipairs(redis.call('HVALS', KEYS[1])) do look(raw, true) end
for q = 0, (#KEYS - 1) / per_queue - 1 do
  local first, total = 2 + q * per_queue, 0
  for k = first, first + per_queue - 1 do total = total + redis.call('LLEN', KEYS[k]) end
  if total > limit then
    table.insert(too_long, q + 1)
  else
    for k = first, first + per_queue - 1 do
      for _, raw in ipairs(redis.call('LRANGE', KEYS[k], 0, -1)) do look(raw, false) end
    end
  end
end
return {found, too_long}
"""


@dataclass(frozen=True)
class StaleTask:
    task_id: str
    name: str
    queue: str


@dataclass
class ReconcileReport:
    examined: int = 0  # task records read
    stale: int = 0  # still queued past ``stale_after``
    lost: int = 0  # failed as MessageLost
    unverified: int = 0  # stale, but in a queue too long to search this run
    complete: bool = True  # the scan saw every record; False: it resumes at the next run


class Reconciler:
    def __init__(
        self,
        records: TaskRecords,
        backend: CourierRedisBackend,
        priority_steps: Sequence[int],
        stale_after: float,
        known_tasks: Collection[str],
        known_queues: Collection[str],
    ) -> None:
        self._records = records
        self._redis = records.client
        self._backend = backend
        self._steps = list(priority_steps)
        self._stale_after = stale_after
        self._known_tasks = known_tasks
        self._known_queues = known_queues
        self._find = self._redis.register_script(_FIND_MESSAGES)

    def run(self) -> ReconcileReport:
        report = ReconcileReport()
        stale = self._stale_tasks(time.time() - self._stale_after, report)
        report.stale = len(stale)
        if stale:
            missing = self._missing(stale, report)
            if missing:
                time.sleep(LIMBO_GRACE_SECONDS)
                missing = self._missing(missing, ReconcileReport())
            report.lost = sum(self._fail(task) for task in missing)
        self._redis.set(RECONCILE_LAST_RUN_KEY, time.time())
        logger.info("records reconciled", extra=vars(report))
        return report

    def _stale_tasks(self, enqueued_before: float, report: ReconcileReport) -> list[StaleTask]:
        cursor = int(cast(bytes | None, self._redis.get(RECONCILE_CURSOR_KEY)) or 0)
        stale: list[StaleTask] = []
        for _ in range(MAX_SCANS_PER_RUN):
            cursor, keys = self._redis.scan(cursor, match=TASK_RECORD_PATTERN, count=SCAN_BATCH)
            report.examined += len(keys)
            stale += self._read_stale(cast(list[bytes], keys), enqueued_before)
            if cursor == 0 or len(stale) >= MAX_STALE_PER_RUN:
                break
        if cursor == 0:
            self._redis.delete(RECONCILE_CURSOR_KEY)
        else:
            report.complete = False
            self._redis.set(RECONCILE_CURSOR_KEY, cursor, ex=_CURSOR_TTL)
        return stale

    def _read_stale(self, keys: Sequence[bytes], enqueued_before: float) -> Iterator[StaleTask]:
        prefix = TASK_RECORD_KEY.format(task_id="")
        ids = [key.decode().removeprefix(prefix) for key in keys]
        pipe = self._redis.pipeline(transaction=False)
        for task_id, key in zip(ids, keys, strict=True):
            pipe.hmget(key, ["enqueued_at", "revoked", "name", "queue"])
            pipe.exists(CELERY_RESULT_KEY.format(task_id=task_id))
        replies: list[Any] = pipe.execute()
        for task_id, (fields, has_state) in zip(ids, zip(replies[::2], replies[1::2], strict=True),
                                                strict=True):  # fmt: skip
            enqueued_at, revoked, name, queue = (f.decode() if f else "" for f in fields)
            if has_state or revoked == "1" or not enqueued_at or not queue:
                continue  # started, finished, retrying, revoked; or not a record of ours
            if float(enqueued_at) < enqueued_before:
                yield StaleTask(task_id, name, queue)

    def _missing(self, tasks: Sequence[StaleTask], report: ReconcileReport) -> list[StaleTask]:
        """The tasks whose message is in none of their queue's lists and not in ``unacked``."""
        queues = sorted({task.queue for task in tasks})
        keys = [KOMBU_UNACKED_KEY]
        for queue in queues:
            keys += priority_lists(queue, self._steps)
        args: list[str | int] = [MAX_MESSAGES_SEARCHED, len(self._steps)]
        args += [task.task_id for task in tasks]
        found, too_long = cast(list[list[Any]], self._find(keys=keys, args=args))
        if 0 in too_long:
            logger.warning("unacked messages too many to reconcile records this run")
            report.unverified += len(tasks)
            return []
        unsearched = {queues[index - 1] for index in too_long}
        present = {raw.decode() for raw in found}
        for queue in unsearched:
            logger.warning("queue too long to reconcile its records now", extra={"queue": queue})
        report.unverified += sum(task.queue in unsearched for task in tasks)
        return [t for t in tasks if t.queue not in unsearched and t.task_id not in present]

    def _fail(self, task: StaleTask) -> bool:
        error = MessageLost(
            f"the task's message vanished from Redis before any worker started it (queue "
            f"{task.queue!r} purged, its list deleted or flushed, or the message lost): "
            f"submit the task again"
        )
        backend = self._backend
        failure = backend.encode_meta(
            task.task_id, backend.prepare_exception(error), states.FAILURE
        )
        if not self._records.mark_lost(task.task_id, failure):
            return False
        metrics.TASKS_LOST.labels(
            task.name if task.name in self._known_tasks else metrics.UNKNOWN_TASK,
            task.queue if task.queue in self._known_queues else metrics.UNKNOWN_QUEUE,
        ).inc()
        logger.warning(
            "task message lost: failed as MessageLost",
            extra={"task_id": task.task_id, "task": task.name, "queue": task.queue},
        )
        return True
