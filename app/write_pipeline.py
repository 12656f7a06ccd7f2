"""Concurrent writes pipelined: the commands issued in one turn of the event loop go out together.

Under load the API has many submits in flight (wrk's 32 connections on 2 workers: ~16 each), and
each sent its own command and waited for its own reply: a send and a read for the API and for
redis-server per submit, and an event-loop wake-up per reply. Here the first command issued in a
turn of the loop starts a flush task; every command issued before that task first runs joins it
(asyncio runs the callbacks already scheduled in a turn before any scheduled during it). The
flush takes one kept connection, sends the commands in one write, and reads their replies in
order, usually from one read of the socket.

Each caller still gets its own command's outcome, with redis-py's meaning: its reply, or the
error reply Redis gave it (``redis.ResponseError``: the connection is fine, the next reply is
read); ``NotReached`` when no connection could be had (nothing was sent); and when a reply cannot
be read (no answer within the socket timeout, a lost link, a garbled reply), that error for this
command and every later one of the flush, whose outcome is unknown: the connection is then
disconnected, so a late reply is never read as another command's. The earlier commands of the
flush keep the replies they got.
"""

from __future__ import annotations

import asyncio
import functools
import math
import weakref
from typing import Any

import redis

from app.kept_connections import NotReached, address, give_back, send, take_connection

Address = tuple[str, int]


class _Pending:
    """The commands issued in this turn of one pool's event loop, waiting for their flush."""

    __slots__ = ("commands", "replies")

    def __init__(self) -> None:
        self.commands: list[bytes] = []
        self.replies: list[asyncio.Future[tuple[Any, Address]]] = []


# Per pool (so per event loop: an asyncio pool serves one), the commands not yet flushed.
_PENDING: weakref.WeakKeyDictionary[Any, _Pending] = weakref.WeakKeyDictionary()
# Flush tasks running: the loop keeps only weak references to tasks.
_FLUSHING: set[asyncio.Task[None]] = set()


async def pipelined_call(pool: Any, packed: bytes) -> tuple[Any, Address]:
    """Send one packed command with the others issued in this turn; its reply and the address of
    the server that gave it. Raises as the module's docstring says."""
    loop = asyncio.get_running_loop()
    pending = _PENDING.get(pool)
    if pending is None:
        pending = _PENDING[pool] = _Pending()
        flush = loop.create_task(_flush(pool, pending))
        _FLUSHING.add(flush)
        flush.add_done_callback(functools.partial(_after_flush, pool, pending))
    reply: asyncio.Future[tuple[Any, Address]] = loop.create_future()
    pending.commands.append(packed)
    pending.replies.append(reply)
    return await reply


def _after_flush(pool: Any, pending: _Pending, flush: asyncio.Task[None]) -> None:
    """Whatever ended the flush, no caller waits for ever: a flush cancelled before it ran (the
    loop shutting down) sent nothing, and no later command joins its batch."""
    _FLUSHING.discard(flush)
    if _PENDING.get(pool) is pending:
        del _PENDING[pool]
    _fail(pending.replies, NotReached(redis.ConnectionError("the write was cancelled unsent")))


async def _flush(pool: Any, pending: _Pending) -> None:
    """Send the pool's pending commands on one connection and settle each caller's reply."""
    if _PENDING.get(pool) is pending:
        del _PENDING[pool]
    # A caller cancelled meanwhile (its client went away): its command is not sent.
    live = [
        (command, reply)
        for command, reply in zip(pending.commands, pending.replies, strict=True)
        if not reply.done()
    ]
    if not live:
        return
    replies = [reply for _, reply in live]
    try:
        connection = await take_connection(pool)
    except Exception as exc:  # NotReached: nothing was sent
        _fail(replies, exc)
        return  # not raised: a task's exception nobody awaits is logged by asyncio as an error
    where = address(connection)
    read = 0
    try:
        # One deadline for the health check's PING, the write and every reply.
        async with asyncio.timeout(connection.socket_timeout):
            await send(connection, b"".join(command for command, _ in live))
            for reply in replies:
                try:
                    outcome = (await connection.read_response(timeout=_UNTIMED), where)
                except redis.ResponseError as exc:  # its error reply; the link is fine
                    _fail([reply], exc)
                else:
                    if not reply.done():  # its caller may have been cancelled
                        reply.set_result(outcome)
                read += 1
    except BaseException as exc:
        # No answer for replies[read] and after, which may have been applied: answered first,
        # then the connection dropped, so a late reply is never read as the next command's.
        _fail(replies[read:], _unanswered(exc, where))
        await connection.disconnect(nowait=True)
        if not isinstance(exc, Exception):
            raise
    finally:
        await give_back(pool, connection)


# redis-py's "no timeout of its own" (``read_response``'s docstring): the flush's one timeout
# covers all its replies, instead of a timer armed and cancelled per reply (~40 K instructions
# each, docs/performance/submit.md). No reply waits longer than redis-py's would have.
_UNTIMED = math.inf


def _unanswered(exc: BaseException, where: Address) -> Exception:
    """What a caller whose reply was not read is told: its write may have been applied."""
    if isinstance(exc, TimeoutError):  # as redis-py says it when a read outlasts its timeout
        return redis.TimeoutError(f"Timeout reading from {where[0]}:{where[1]}")
    if isinstance(exc, Exception):
        return exc
    return redis.ConnectionError("the write's reply was not read")  # the flush was cancelled


def _fail(replies: list[asyncio.Future[Any]], exc: BaseException) -> None:
    """Every caller in ``replies`` not answered yet gets ``exc``."""
    for reply in replies:
        if not reply.done():
            reply.set_exception(exc)
