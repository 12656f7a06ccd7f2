"""Redis clients that fail fast and say how, and the classification of what Redis answers.

Three ways a command can fail, and what each says about its effect:
- *refused*: Redis answered with an error reply such as ``OOM`` (``REFUSALS``): it did not run
  the command, and will again once the condition passes (the queue drains, the failover ends).
- *unreachable before sending*: no connection could be made: nothing reached Redis.
- *no answer after sending* (a timeout, a connection lost mid-reply): Redis may or may not have
  run it. redis-py would retry such a command once by default, doubling the wait (two socket
  timeouts) and running it twice when the first copy got through; these clients never retry.
  A connection that died while idle in the pool is replaced before it is handed out (redis-py
  checks each one), so no retry is needed for that.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from worker.core.settings import Settings

# An idle connection whose peer vanished (a partition, a dead node) is noticed within about
# KEEPIDLE + KEEPINTVL * KEEPCNT seconds instead of the kernel's two hours.
TCP_KEEPALIVE_OPTIONS: dict[int, int] = {
    socket.TCP_KEEPIDLE: 5,
    socket.TCP_KEEPINTVL: 1,
    socket.TCP_KEEPCNT: 3,
}
# A connection idle longer than this is PINGed before it is used again.
HEALTH_CHECK_INTERVAL_SECONDS = 10


def connection_options(settings: Settings) -> dict[str, Any]:
    """The options every Courier connection to Redis uses (redis-py keyword arguments)."""
    return {
        "socket_timeout": settings.redis_socket_timeout,
        "socket_connect_timeout": settings.redis_connect_timeout,
        "socket_keepalive": True,
        "socket_keepalive_options": TCP_KEEPALIVE_OPTIONS,
        "health_check_interval": HEALTH_CHECK_INTERVAL_SECONDS,
    }


def create_redis(settings: Settings) -> redis.Redis:
    """A pooled client: a timeout is an error after ``redis_socket_timeout``, never retried."""
    return redis.Redis.from_url(
        settings.redis_url, retry=Retry(NoBackoff(), 0), **connection_options(settings)
    )


def create_async_redis(settings: Settings) -> redis.asyncio.Redis:
    """The asyncio twin of ``create_redis``, for the API's event loop (same options)."""
    return redis.asyncio.Redis.from_url(
        settings.redis_url, retry=AsyncRetry(NoBackoff(), 0), **connection_options(settings)
    )


# A Redis command as (redis-py method name, arguments), queued later on a pipeline.
Command = tuple[str, tuple[Any, ...]]


def queue_commands(pipe: Any, commands: Sequence[Command]) -> None:
    """Queue ``commands`` on a redis-py pipeline, sync or asyncio (same method names)."""
    for name, args in commands:
        getattr(pipe, name)(*args)


# Redis did not answer: no connection, or no reply in time (BusyLoadingError and
# AuthenticationError are ConnectionErrors too).
REDIS_ERRORS: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)

# Error replies by which Redis refuses a command without running it, for as long as a
# condition lasts: sending it again later is safe and will work once the condition passes.
REFUSALS: dict[str, str] = {
    "OOM": "Redis is full (maxmemory reached)",
    "READONLY": "Redis is a read-only replica (a failover in progress?)",
    "MISCONF": "Redis cannot persist to disk and refuses writes",
    "BUSY": "Redis is busy running a script",
    "NOREPLICAS": "Redis has fewer replicas than min-replicas-to-write",
    "MASTERDOWN": "the Redis replica lost its master",
    "LOADING": "Redis is loading its dataset",
    "TRYAGAIN": "Redis asks to try again",
    "CLUSTERDOWN": "the Redis cluster is down",
}
# The refusals redis-py raises as classes of their own; the others are plain ResponseErrors.
REFUSED_TYPES: dict[type[Exception], str] = {
    redis.exceptions.OutOfMemoryError: "OOM",
    redis.exceptions.ReadOnlyError: "READONLY",
    redis.exceptions.BusyLoadingError: "LOADING",
    redis.exceptions.MasterDownError: "MASTERDOWN",
    redis.exceptions.TryAgainError: "TRYAGAIN",
    redis.exceptions.ClusterDownError: "CLUSTERDOWN",
}
# A pipeline's error names its command first: "Command # 1 (HSET ...) of pipeline caused
# error: MISCONF ...".
_PIPELINE_PREFIX = "caused error: "


# The first line of a Lua script whose writes a full Redis (maxmemory reached, noeviction) must
# still accept. While over maxmemory, Redis 7 refuses a flagged script up front unless it is
# ``allow-oom`` (or ``no-writes``), and a script without flags at its first command that may
# grow memory (SET, HSET, LPUSH...) unless it already wrote something (FETCH's RPOP); it also
# refuses every command queued into MULTI. Only the writes without which a worker cannot finish
# what was accepted carry the flag: the start stamp, the stored state of a task, the push of a
# retry (and the few bytes of queue bindings a starting worker declares). Why that is bounded:
# the API refuses submits from COURIER_REDIS_MEMORY_HIGH_WATERMARK of maxmemory on, so these
# writes only finish accepted tasks; each task's message leaves Redis at its acknowledgement,
# so the growth is at most the accepted backlog times (its result - its message), room the
# chart keeps between maxmemory and the container's limit (redis.maxmemoryPercent).
ALLOW_OOM = "#!lua flags=allow-oom\n"
# A script that only reads: Redis runs it even when full (MULTI/EXEC is refused then, reads
# included: queuing a command into a transaction is refused over maxmemory).
NO_WRITES = "#!lua flags=no-writes\n"


def refusal_code(exc: BaseException) -> str | None:
    """The ``REFUSALS`` code of an error reply that refused a command, else None."""
    for kind, code in REFUSED_TYPES.items():
        if isinstance(exc, kind):
            return code
    if isinstance(exc, redis.ResponseError):
        message = str(exc).rpartition(_PIPELINE_PREFIX)[2]
        code = message.split(" ", 1)[0]
        return code if code in REFUSALS else None
    return None


def is_transient(exc: BaseException) -> bool:
    """Redis is away or refusing for now: wait and try again, never give up for good."""
    return isinstance(exc, REDIS_ERRORS) or refusal_code(exc) is not None


@dataclass(frozen=True)
class RedisMemory:
    """``INFO memory``, as far as admission is concerned."""

    used: int  # used_memory
    not_counted: int  # mem_not_counted_for_evict: AOF and replica buffers, not held to maxmemory
    maxmemory: int  # 0: no limit

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> RedisMemory:
        return cls(
            used=int(info.get("used_memory", 0)),
            not_counted=int(info.get("mem_not_counted_for_evict", 0)),
            maxmemory=int(info.get("maxmemory", 0)),
        )

    @property
    def fraction(self) -> float:
        """Of maxmemory, as Redis counts it when it refuses writes (0 without a limit)."""
        if not self.maxmemory:
            return 0.0
        return max(0, self.used - self.not_counted) / self.maxmemory

    def describe(self) -> str:
        if not self.maxmemory:
            return f"used_memory {_mib(self.used)}, no maxmemory"
        return (
            f"used_memory {_mib(self.used)} of maxmemory {_mib(self.maxmemory)}"
            f" ({self.fraction:.0%})"
        )


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def read_memory(client: redis.Redis) -> RedisMemory:
    return RedisMemory.from_info(client.info("memory"))
