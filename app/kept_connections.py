"""Connections kept out of an asyncio pool for the submit's writes, handed out ready to send.

A pool checkout and release (its lock, its connection-count metrics, its release event) were
~10 % of a submit's instructions (callgrind, 2026-12-07): a kept connection is handed out with
only the checks the pool makes on every checkout. ``app.atomic_write`` and
``app.write_pipeline`` send on them; a failure to get one is ``NotReached`` (nothing sent).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import redis

from worker.core.redis_client import REDIS_ERRORS


class NotReached(Exception):
    """No connection to Redis could be had: nothing was sent."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


# Connections kept checked out of each asyncio pool, idle between writes; handed out with the
# checks the pool makes on every checkout (``ensure_connection``: connected, no stray data, else
# a reconnect). To the pool they stay in use, so ``aclose()`` still disconnects them.
_KEPT: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()


async def take_connection(pool: Any) -> Any:
    """A connection ready to send, as ``pool.get_connection()`` gives it; ``NotReached`` when
    none could be had (nothing was sent)."""
    kept = _KEPT.get(pool)
    if not kept:
        try:
            return await pool.get_connection()
        except REDIS_ERRORS as exc:
            raise NotReached(exc) from exc
    connection = kept.pop()
    try:
        if _left_for_another_primary(pool, connection):
            await connection.disconnect()
        elif connection.is_connected and await _idle_and_clean(connection):
            return connection  # what ensure_connection checks, without its connect() retry
        await pool.ensure_connection(connection)
    except BaseException as exc:
        await pool.release(connection)
        if isinstance(exc, REDIS_ERRORS):
            raise NotReached(exc) from exc
        raise
    return connection


async def _idle_and_clean(connection: Any) -> bool:
    """Nothing unread and no end of stream on an open connection: the check the pool's
    ``ensure_connection`` makes after its ``connect()``. Anything else (stray data, a closed
    or reset link) is left to ``ensure_connection``, which sees the same and reconnects."""
    try:
        return not await connection.can_read()
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False


def _left_for_another_primary(pool: Any, connection: Any) -> bool:
    """Sentinel mode: the pool learnt of a new primary since this connection was made. The pool
    disconnects its idle connections then; a kept one is dropped here, before its next use, so
    it reconnects through Sentinel (to the pool's primary, with its ``FencedConnection``)."""
    primary = getattr(pool, "master_address", None)
    return (
        primary is not None
        and connection.is_connected
        and (connection.host, connection.port) != tuple(primary)
    )


async def give_back(pool: Any, connection: Any) -> None:
    if connection.should_reconnect():  # the pool's release reconnects it, as before
        await pool.release(connection)
        return
    _KEPT.setdefault(pool, []).append(connection)


# Above asyncio's default high-water mark a write may wait for the socket (``drain``).
_NEVER_WAITS = 64 * 1024


async def send(connection: Any, packed: bytes) -> None:
    """``connection.send_packed_command(packed)``, without its ``asyncio.wait_for`` (a task and
    two turns of the event loop per command, ~5 % of a submit) when the write cannot wait: the
    connection is open, idle (nothing buffered), not due for its health check, and the command
    is below the transport's high-water mark, so ``drain`` would return at once. A socket error
    then closes the transport and is raised by ``read_response`` as redis-py raises it (the
    connection dropped, a ``ConnectionError``); anything else takes redis-py's own path."""
    writer = connection._writer
    if (
        writer is None
        or len(packed) >= _NEVER_WAITS
        or writer.transport.is_closing()
        or writer.transport.get_write_buffer_size()
        or (
            connection.health_check_interval
            and asyncio.get_running_loop().time() > connection.next_health_check
        )
    ):
        await connection.send_packed_command(packed)
        return
    writer.write(packed)


def address(connection: Any) -> tuple[str, int]:
    """Where a connection's writes went: the server a ``Written`` names."""
    return str(connection.host), int(connection.port)
