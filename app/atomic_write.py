"""A submit's writes (record and message) as one ``EVALSHA``: atomic, one round trip, one reply.

A MULTI/EXEC of the same three writes is five commands and five replies, and redis-py's asyncio
pipeline arms a timer per reply: measured with callgrind, that transaction was more than a
quarter of a submit's instructions. One script call writes the same keys with the same bytes
(the commands still come from ``TaskRecords`` and kombu, unchanged; redis-py encodes their
arguments as it would have), as atomically: nothing else runs between them, and a write Redis
refuses (``OOM``, ``READONLY``, ``MISCONF``) is refused at the first one, before anything is
written, with the same error reply (so the same exception class and ``refusal_code``).

The connection is taken from the pool apart from the write, as before, so a failure to reach
Redis is known to have stored nothing. ``NOSCRIPT`` (Redis restarted, or ``SCRIPT FLUSH``) ran
nothing either: the script is then sent in full once with ``EVAL``, which also caches it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import redis
from redis._parsers import Encoder
from redis.asyncio import Redis as AsyncRedis
from redis.commands.core import CoreCommands

from worker.core.redis_client import REDIS_ERRORS, Command

# ARGV holds, per command, its argument count and then its name and arguments after the key;
# KEYS[i] is the key of command i. Every command here names its key first.
WRITE_ALL = """
local at = 1
for i = 1, #KEYS do
  local count = tonumber(ARGV[at])
  local command = {ARGV[at + 1], KEYS[i]}
  for j = at + 2, at + count do
    command[#command + 1] = ARGV[j]
  end
  redis.call(unpack(command))
  at = at + count + 1
end
return #KEYS
"""
WRITE_ALL_SHA = hashlib.sha1(WRITE_ALL.encode()).hexdigest()


class NotReached(Exception):
    """No connection to Redis could be had: nothing was sent."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


class _Arguments(CoreCommands):
    """redis-py's command methods, recording the arguments they would send instead."""

    _event_dispatcher: Any = None  # declared abstract by redis-py; no command used here reads it

    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any, **options: Any) -> None:
        self.sent.append(args)


def script_arguments(commands: Sequence[Command]) -> tuple[list[Any], list[Any]]:
    """KEYS and ARGV of ``WRITE_ALL`` for ``commands`` given as (redis-py method, arguments)."""
    recorder = _Arguments()
    for name, args in commands:
        getattr(recorder, name)(*args)
    keys: list[Any] = []
    argv: list[Any] = []
    for name, key, *rest in recorder.sent:
        keys.append(key)
        argv += [len(rest) + 1, name, *rest]
    return keys, argv


def pack_command(args: Sequence[Any], encoder: Encoder) -> bytes:
    """The bytes redis-py's own packer sends for ``args`` (RESP: an array of bulk strings),
    in one pass: its packer calls its encoder per argument and re-formats the growing buffer
    per argument, a visible share of a submit's instructions for the ~20 arguments here."""
    encoding, errors = encoder.encoding, encoder.encoding_errors
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if type(arg) is str:
            data = arg.encode(encoding, errors)
        elif type(arg) is bytes:
            data = arg
        else:  # numbers, and anything redis-py refuses: its encoder decides
            data = bytes(encoder.encode(arg))  # type: ignore[no-untyped-call]
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


async def write_all(client: AsyncRedis, commands: Sequence[Command]) -> None:
    """Run ``commands`` atomically in one round trip. ``NotReached`` when Redis could not be
    reached (nothing sent); any other error was raised after sending."""
    keys, argv = script_arguments(commands)
    pool = client.connection_pool
    try:
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    except REDIS_ERRORS as exc:
        raise NotReached(exc) from exc
    try:
        try:
            arguments = (len(keys), *keys, *argv)
            await connection.send_packed_command(
                pack_command(("EVALSHA", WRITE_ALL_SHA, *arguments), connection.encoder)
            )
            await connection.read_response()
        except redis.exceptions.NoScriptError:
            await connection.send_packed_command(
                pack_command(("EVAL", WRITE_ALL, *arguments), connection.encoder)
            )
            await connection.read_response()
    except redis.ResponseError:
        raise  # an error reply: the connection is fine
    except BaseException:
        # No answer (timeout, cancellation, lost link): a late reply must not be read as the
        # answer to the next command sent on this connection.
        await connection.disconnect()
        raise
    finally:
        await pool.release(connection)
