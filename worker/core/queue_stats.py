"""Queue depth read straight from Redis: what is waiting, what workers hold, how old it is.

``LLEN`` alone under-counts: with late acks, messages a worker reserved (prefetched) or holds
for an ETA sit in kombu's ``unacked`` hash, invisible to a list length. The backlog an
autoscaler needs is waiting + reserved; delayed (future-ETA) messages are reported apart.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import redis

from worker.core.names import (
    ENQUEUED_AT_HEADER,
    KOMBU_PRIORITY_SEP,
    KOMBU_UNACKED_KEY,
    WORKER_KEY,
    WORKERS_KEY,
)
from worker.core.redis_client import ALLOW_OOM

# Counts unacknowledged messages per routing key, split by whether their ETA is still ahead.
# Runs inside Redis so message bodies never cross the network.
_UNACKED_BY_QUEUE = """
local now = ARGV[1]
local reserved, delayed = {}, {}
for _, raw in ipairs(redis.call('HVALS', KEYS[1])) do
  local ok, entry = pcall(cjson.decode, raw)
  if ok and type(entry) == 'table' and type(entry[3]) == 'string' then
    local rk = entry[3]
    local eta = nil
    if type(entry[1]) == 'table' and type(entry[1]['headers']) == 'table' then
      eta = entry[1]['headers']['eta']
    end
    if type(eta) == 'string' and eta > now then
      delayed[rk] = (delayed[rk] or 0) + 1
    else
      reserved[rk] = (reserved[rk] or 0) + 1
    end
  end
end
local out = {}
for rk, n in pairs(reserved) do
  table.insert(out, rk); table.insert(out, 'r'); table.insert(out, n)
end
for rk, n in pairs(delayed) do
  table.insert(out, rk); table.insert(out, 'd'); table.insert(out, n)
end
return out
"""

# Take or renew the lease when free or already ours; 1 when we hold it.
# KEYS[1] the lease, KEYS[2] the worker registry. ARGV: holder, TTL (ms), now, 1 when the holder
# defers to live workers. Returns 1 when ARGV[1] holds the lease. A deferring holder (an API pod)
# gives the lease up, and never takes it, while a worker is alive: workers export the queue
# gauges as celery-exporter's users expect (celery-mixin selects job=~".*celery.*"), and the API
# only when none is left.
_LEASE_OR_DEFER = """
local holder = redis.call('GET', KEYS[1])
if ARGV[4] == '1' and redis.call('ZCOUNT', KEYS[2], ARGV[3], '+inf') > 0 then
  if holder == ARGV[1] then redis.call('DEL', KEYS[1]) end
  return 0
end
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""


@dataclass(frozen=True)
class QueueStats:
    queue: str
    waiting: int  # in the queue's lists, all priorities
    reserved: int  # delivered to a worker, not acknowledged, due now
    delayed: int  # held by a worker until a future ETA
    oldest_age_seconds: float  # age of the oldest waiting message (0 when empty)

    @property
    def backlog(self) -> int:
        return self.waiting + self.reserved


@dataclass(frozen=True)
class QueueWorkers:
    workers: int
    processes: int


def priority_lists(queue: str, steps: Sequence[int]) -> list[str]:
    """kombu's list names for one queue: the bare name for priority 0, a suffix for others."""
    return [queue if step == 0 else f"{queue}{KOMBU_PRIORITY_SEP}{step}" for step in steps]


def due_time(enqueued_at: object, eta: object) -> float | None:
    """When a message became runnable: its enqueue time, or its ETA when that is later. A
    message from another producer has no enqueue time (Celery's protocol carries none): its
    ETA, when it has one, is the best known; without either it cannot be measured (None)."""
    due = float(enqueued_at) if isinstance(enqueued_at, int | float) else None
    if isinstance(eta, str):
        with contextlib.suppress(ValueError, OverflowError, OSError):
            at = datetime.fromisoformat(eta).timestamp()
            due = at if due is None else max(due, at)
    return due


def _message_due_time(raw: bytes | None) -> float | None:
    if not raw:
        return None
    try:
        headers: dict[str, Any] = json.loads(raw).get("headers") or {}
    except (ValueError, AttributeError):
        return None
    return due_time(headers.get(ENQUEUED_AT_HEADER), headers.get("eta"))


class QueueInspector:
    def __init__(self, client: redis.Redis, queues: Sequence[str], steps: Sequence[int]) -> None:
        self._redis = client
        self._queues = list(queues)
        self._steps = list(steps)
        self._unacked = client.register_script(_UNACKED_BY_QUEUE)
        self._lease = client.register_script(_LEASE)
        self._lease_or_defer = client.register_script(_LEASE_OR_DEFER)

    def stats(self) -> list[QueueStats]:
        pipe = self._redis.pipeline(transaction=False)
        for queue in self._queues:
            for name in priority_lists(queue, self._steps):
                pipe.llen(name)
                pipe.lindex(name, -1)  # kombu pushes left, pops right: the tail is the oldest
        replies = pipe.execute()
        now_iso = datetime.now(UTC).isoformat()
        flat = cast(list[Any], self._unacked(keys=[KOMBU_UNACKED_KEY], args=[now_iso]))
        held: dict[tuple[str, str], int] = {}
        for i in range(0, len(flat), 3):
            held[(flat[i].decode(), flat[i + 1].decode())] = int(flat[i + 2])
        now = time.time()
        result: list[QueueStats] = []
        per_queue = 2 * len(self._steps)
        for index, queue in enumerate(self._queues):
            chunk = replies[index * per_queue : (index + 1) * per_queue]
            lengths, tails = chunk[0::2], chunk[1::2]
            due = [t for t in (_message_due_time(raw) for raw in tails) if t is not None]
            oldest = max(0.0, now - min(due)) if due else 0.0
            result.append(
                QueueStats(
                    queue=queue,
                    waiting=sum(int(n) for n in lengths),
                    reserved=held.get((queue, "r"), 0),
                    delayed=held.get((queue, "d"), 0),
                    oldest_age_seconds=oldest,
                )
            )
        return result

    def hold_lease(self, key: str, holder: str, ttl_seconds: float) -> bool:
        return bool(self._lease(keys=[key], args=[holder, int(ttl_seconds * 1000)]))

    def hold_lease_unless_workers(self, key: str, holder: str, ttl_seconds: float) -> bool:
        """``hold_lease`` for a holder that stands in for the workers only while none lives."""
        args: list[str | float] = [holder, int(ttl_seconds * 1000), time.time(), 1]
        return bool(self._lease_or_defer(keys=[key, WORKERS_KEY], args=args))

    def workers_per_queue(self) -> dict[str, QueueWorkers]:
        """Live workers and pool processes consuming each queue, from the worker registry."""
        now = time.time()
        self._redis.zremrangebyscore(WORKERS_KEY, "-inf", now)
        hostnames = [h.decode() for h in cast(list[bytes], self._redis.zrange(WORKERS_KEY, 0, -1))]
        pipe = self._redis.pipeline(transaction=False)
        for hostname in hostnames:
            pipe.hgetall(WORKER_KEY.format(hostname=hostname))
        counts: dict[str, list[int]] = {queue: [0, 0] for queue in self._queues}
        for info in pipe.execute():
            if not info:
                continue
            concurrency = int(info.get(b"concurrency", 0))
            for queue in info.get(b"queues", b"").decode().split(","):
                if queue:
                    slot = counts.setdefault(queue, [0, 0])
                    slot[0] += 1
                    slot[1] += concurrency
        return {queue: QueueWorkers(w, p) for queue, (w, p) in counts.items()}


# KEYS: the worker's entry, the registry. ARGV: queues, concurrency, TTL, deadline, hostname.
# allow-oom: a worker draining a full Redis is alive, and its entry (the same keys rewritten
# each beat, no growth) must say so, or the registry and courier_queue_workers read 0.
_REGISTER = (
    ALLOW_OOM
    + """
redis.call('HSET', KEYS[1], 'queues', ARGV[1], 'concurrency', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
"""
)


def register_worker(
    client: redis.Redis, hostname: str, queues: Sequence[str], concurrency: int, ttl: float
) -> None:
    """Announce a live worker until ``ttl`` seconds from now (the heartbeat renews it)."""
    keys = [WORKER_KEY.format(hostname=hostname), WORKERS_KEY]
    args: list[str | int | float] = [",".join(queues), concurrency]
    args += [max(1, int(ttl)), time.time() + ttl, hostname]
    client.register_script(_REGISTER)(keys=keys, args=args)


def deregister_worker(client: redis.Redis, hostname: str) -> None:
    pipe = client.pipeline(transaction=True)
    pipe.delete(WORKER_KEY.format(hostname=hostname))
    pipe.zrem(WORKERS_KEY, hostname)
    pipe.execute()
