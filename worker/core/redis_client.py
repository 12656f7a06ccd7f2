"""Redis clients with the short timeouts that make an outage a fast, clear error."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from worker.core.settings import Settings


def create_redis(settings: Settings) -> redis.Redis:
    """A pooled client; one retry reconnects a connection that went stale across a Redis restart."""
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=settings.redis_connect_timeout,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
    )


def create_async_redis(settings: Settings) -> redis.asyncio.Redis:
    """The asyncio twin of ``create_redis``, for the API's event loop (same options)."""
    return redis.asyncio.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=settings.redis_connect_timeout,
        retry=AsyncRetry(NoBackoff(), 1),
        health_check_interval=30,
    )


# A Redis command as (redis-py method name, arguments), queued later on a pipeline.
Command = tuple[str, tuple[Any, ...]]


def queue_commands(pipe: Any, commands: Sequence[Command]) -> None:
    """Queue ``commands`` on a redis-py pipeline, sync or asyncio (same method names)."""
    for name, args in commands:
        getattr(pipe, name)(*args)


REDIS_ERRORS: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)
