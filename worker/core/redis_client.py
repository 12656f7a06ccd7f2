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

With Sentinel (``COURIER_REDIS_SENTINELS``), every client here, the broker transport's and the
result backend's get their connections from redis-py's ``SentinelConnectionPool``
(``sentinel_pool``): each new connection asks the Sentinels for the primary's address, and a
connection that finds the primary demoted (a ``READONLY`` reply, or ``UNBLOCKED`` on a blocked
command) is dropped and its command raised as a ``ConnectionError``: a failover is a reconnect.
A ``READONLY`` refusal thus arrives as "no answer" (conservative: the command did not run).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from worker.core.primary_watch import WATCH
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
    options = {"retry": Retry(NoBackoff(), 0), **connection_options(settings)}
    sentinel = sentinel_options(settings)
    if sentinel is None:
        return redis.Redis.from_url(settings.redis_url, **options)
    kwargs = redis.connection.parse_url(settings.redis_url)  # type: ignore[no-untyped-call]
    return _SentinelRedis.from_pool(sentinel_pool(sentinel, {**kwargs, **options}))


def create_async_redis(settings: Settings) -> redis.asyncio.Redis:
    """The asyncio twin of ``create_redis``, for the API's event loop (same options)."""
    options = {"retry": AsyncRetry(NoBackoff(), 0), **connection_options(settings)}
    sentinel = sentinel_options(settings)
    if sentinel is None:
        return redis.asyncio.Redis.from_url(settings.redis_url, **options)
    kwargs = redis.asyncio.connection.parse_url(settings.redis_url)
    pool = sentinel_pool(sentinel, {**kwargs, **options}, asyncio=True)
    return _AsyncSentinelRedis.from_pool(pool)


# --- Sentinel ------------------------------------------------------------------------------

# The TLS options a ``rediss://`` URL may carry; the Sentinels are reached with the same ones.
_TLS_QUERY_OPTIONS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def sentinel_options(settings: Settings) -> dict[str, Any] | None:
    """Where the primary is found, as plain data (the broker transport and the result backend
    take it among their options, which ``celery inspect conf`` and Flower print as JSON; Celery
    hides the values of keys naming a password). None without Sentinel."""
    if not settings.uses_sentinel:
        return None
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": settings.redis_socket_timeout,
        "socket_connect_timeout": settings.redis_connect_timeout,
        "socket_keepalive": True,
        "socket_keepalive_options": TCP_KEEPALIVE_OPTIONS,
    }
    if settings.redis_sentinel_password is not None:
        sentinel_kwargs["password"] = settings.redis_sentinel_password.get_secret_value()
    url = urlsplit(settings.redis_url)
    if url.scheme == "rediss":
        # A deployment that encrypts its data connections encrypts the Sentinels' too.
        query = dict(parse_qsl(url.query))
        sentinel_kwargs["ssl"] = True
        sentinel_kwargs.update({k: query[k] for k in _TLS_QUERY_OPTIONS if k in query})
    return {
        "sentinels": [[address.host, address.port] for address in settings.redis_sentinels],
        "master_name": settings.redis_sentinel_master,
        "sentinel_kwargs": sentinel_kwargs,
    }


def sentinel_pool(
    options: Mapping[str, Any],
    connection_kwargs: Mapping[str, Any],
    *,
    asyncio: bool = False,
    watch: bool = True,
) -> Any:
    """redis-py's ``SentinelConnectionPool`` for the primary named in ``options``
    (``sentinel_options``), whose connections are made with ``connection_kwargs`` (a direct
    connection's: host and port are dropped, a TLS connection class stays TLS). A sync pool is
    followed by ``primary_watch`` unless ``watch`` is False (kombu's event-loop pool, whose
    connections may only be closed from the event loop's thread)."""
    kwargs = {k: v for k, v in connection_kwargs.items() if k not in ("host", "port")}
    kwargs["connection_class"] = _sentinel_managed(kwargs.get("connection_class"), asyncio)
    module: Any = redis.asyncio.sentinel if asyncio else redis.sentinel
    sentinels = [(host, int(port)) for host, port in options["sentinels"]]
    manager = (_AsyncSentinel if asyncio else _Sentinel)(
        sentinels, sentinel_kwargs=dict(options["sentinel_kwargs"])
    )
    pool = module.SentinelConnectionPool(options["master_name"], manager, **kwargs)
    if watch and not asyncio:  # the API's asyncio pool is followed by its failover audit
        WATCH.add((tuple(sentinels), options["master_name"]), pool)
    return pool


# The error reply of a primary with fewer good replicas than its min-replicas-to-write.
NOREPLICAS = "NOREPLICAS"


def _left_behind(connection: Any, exc: redis.ResponseError) -> bool:
    return bool(connection.connection_pool.is_master) and str(exc).startswith(NOREPLICAS)


class FencedConnection(redis.sentinel.SentinelManagedConnection):
    """redis-py's Sentinel-managed connection, which treats ``NOREPLICAS`` as ``READONLY``: the
    server is a primary left behind by a failover. After a planned switch the old primary is
    demoted only ~10 s later; once its replicas have left for the new one, ``min-replicas-to-
    write`` makes it refuse writes, and this reply is the first sign a client gets. Dropping
    the connection sends the next command through Sentinel to the new primary, instead of
    asking the old one again until it is demoted."""

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except redis.ResponseError as exc:
            if not _left_behind(self, exc):
                raise
            self.disconnect()  # type: ignore[no-untyped-call]
            raise redis.ConnectionError(f"the primary lost its replicas: {exc}") from exc


class FencedSSLConnection(FencedConnection, redis.SSLConnection):
    pass


class AsyncFencedConnection(redis.asyncio.sentinel.SentinelManagedConnection):
    """``FencedConnection`` for asyncio clients."""

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except redis.ResponseError as exc:
            if not _left_behind(self, exc):
                raise
            await self.disconnect()
            raise redis.ConnectionError(f"the primary lost its replicas: {exc}") from exc


class AsyncFencedSSLConnection(AsyncFencedConnection, redis.asyncio.SSLConnection):
    pass


def _settled(state: Mapping[str, Any]) -> bool:
    """Is this Sentinel's answer about the primary final, not mid-failover?

    redis-py finds the primary with ``SENTINEL MASTERS`` (redis-py issue 626), and the Sentinel
    leading a failover keeps naming the old primary there, flagged ``failover_in_progress``,
    until every other replica has resynced with the promoted one (seconds; minutes for a large
    dataset), while the other Sentinels name the new primary at once. A client that asked the
    leader went back to the old primary: demoted, it refused every write, and the worker's
    consumer retried five times a second until the leader was done. Such an answer is skipped
    for the next Sentinel's; with none left, the primary is not found (a connection error,
    tried again), which is the truth while it is being switched."""
    flags = state.get("flags", "")
    return "failover_in_progress" not in (flags.split(",") if isinstance(flags, str) else flags)


class _Sentinel(redis.sentinel.Sentinel):
    def check_master_state(self, state: dict[str, Any], service_name: str) -> bool:
        healthy = super().check_master_state(state, service_name)  # type: ignore[no-untyped-call]
        return bool(healthy) and _settled(state)


class _AsyncSentinel(redis.asyncio.sentinel.Sentinel):
    def check_master_state(self, state: dict[str, Any], service_name: str) -> bool:
        return super().check_master_state(state, service_name) and _settled(state)


def _sentinel_managed(connection_class: type | None, asyncio: bool) -> type:
    """The Sentinel-managed twin of a direct connection class (TLS or not)."""
    plain: Any = redis.asyncio if asyncio else redis
    managed: type = AsyncFencedConnection if asyncio else FencedConnection
    if connection_class is None or issubclass(connection_class, managed):
        return connection_class or managed
    if issubclass(connection_class, plain.SSLConnection):
        return AsyncFencedSSLConnection if asyncio else FencedSSLConnection
    if issubclass(connection_class, plain.UnixDomainSocketConnection):
        raise ValueError("Sentinel names TCP addresses: COURIER_REDIS_URL cannot be a socket")
    return managed


class _SentinelRedis(redis.Redis):
    """Closes the connections to the Sentinels with the client (redis-py leaves them open)."""

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.connection_pool.sentinel_manager.close()  # type: ignore[attr-defined]


class _AsyncSentinelRedis(redis.asyncio.Redis):
    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            await self.connection_pool.sentinel_manager.aclose()  # type: ignore[attr-defined]


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
# grow memory (SET, HSET, LPUSH...) unless it already wrote something; it also refuses every
# command queued into MULTI. Only the writes without which a worker cannot finish what was
# accepted carry the flag: the start stamp, the stored state of a task (also when the fetch or
# ACK that acknowledges it carries it), the push of a retry (and the few bytes of queue
# bindings a starting worker declares). Why that is bounded:
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
