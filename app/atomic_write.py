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
A call without ``WAIT`` shares its round trip with the others issued in the same turn of the
event loop (``app.write_pipeline``), with the same outcomes per call.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis._parsers import Encoder
from redis.asyncio import Redis as AsyncRedis
from redis.commands.core import CoreCommands

from app.kept_connections import address, give_back, send, take_connection
from app.write_pipeline import pipelined_call
from worker.core.redis_client import Command
from worker.core.settings import Settings

# ARGV[1] is the condition: '' none; '=<value>' when KEYS[1] (the guard's key) must hold
# <value> (an idempotency claim), '!' when KEYS[1] must not exist (a re-write after a failover
# of a task whose record is gone). A failed condition writes nothing and returns -1.
# Then, per command, its argument count and its name and arguments after the key; its key is
# the next of KEYS. Every command here names its key first.
WRITE_ALL = """
local condition = ARGV[1]
local first_key = 1
if condition ~= '' then
  first_key = 2
  if condition == '!' then
    if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
  elseif redis.call('GET', KEYS[1]) ~= string.sub(condition, 2) then
    return -1
  end
end
local at = 2
for i = first_key, #KEYS do
  local count = tonumber(ARGV[at])
  local command = {ARGV[at + 1], KEYS[i]}
  for j = at + 2, at + count do
    command[#command + 1] = ARGV[j]
  end
  redis.call(unpack(command))
  at = at + count + 1
end
return #KEYS - first_key + 1
"""
WRITE_ALL_SHA = hashlib.sha1(WRITE_ALL.encode()).hexdigest()
# The common write, a new task's record and message with no condition: WRITE_ALL's writes for
# that one shape, without its loop and the tables it builds per command. KEYS: the record, the
# queue's list; ARGV: the record's time to live, the message, then the record's fields and
# values. Measured with redis-server's own CPU time (/proc) over 20,000 writes, 1.2 KB
# messages: 13-15 us a write against WRITE_ALL's 17-19 us.
WRITE_TASK = """
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('LPUSH', KEYS[2], ARGV[2])
return 3
"""
WRITE_TASK_SHA = hashlib.sha1(WRITE_TASK.encode()).hexdigest()


@dataclass(frozen=True)
class Script:
    """A script's text, and its SHA1 as ``EVALSHA`` names it."""

    text: str
    sha: str


ALL = Script(WRITE_ALL, WRITE_ALL_SHA)
TASK = Script(WRITE_TASK, WRITE_TASK_SHA)


@dataclass(frozen=True)
class Condition:
    """Write only while ``key`` holds ``expected``, or, with ``expected`` None, while ``key``
    does not exist."""

    key: str
    expected: bytes | None = None

    def arguments(self) -> tuple[list[Any], bytes]:
        return [self.key], b"!" if self.expected is None else b"=" + self.expected


class ConditionFailed(Exception):
    """The condition did not hold: nothing was written."""


class NotReplicated(redis.RedisError):
    """Written on the primary, but fewer replicas than asked acknowledged it in time: a failover
    now could lose it (``redis_client.REPLICATION``)."""

    def __init__(self, acknowledged: int, wanted: int, timeout_ms: int) -> None:
        super().__init__(
            f"the write reached {acknowledged} of the {wanted} replica(s) it waits for"
            f" within {timeout_ms} ms"
        )


@dataclass(frozen=True)
class Replication:
    """``WAIT replicas timeout_ms`` after the write (``replicas`` 0: no WAIT)."""

    replicas: int = 0
    timeout_ms: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> Replication:
        """Only with Sentinel: a standalone Redis has no replica a failover would promote."""
        if not settings.uses_sentinel:
            return cls()
        timeout_ms = max(1, round(settings.redis_replica_ack_timeout * 1000))
        return cls(settings.redis_min_replicas_ack, timeout_ms)


NO_WAIT = Replication()


@dataclass(frozen=True)
class Written:
    """A script call Redis answered, and where: the address of the server that answered."""

    address: tuple[str, int]
    applied: bool  # False: its condition did not hold, nothing was written


class _Arguments(CoreCommands):
    """redis-py's command methods, recording the arguments they would send instead."""

    _event_dispatcher: Any = None  # declared abstract by redis-py; no command used here reads it

    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any, **options: Any) -> None:
        self.sent.append(args)


def script_arguments(
    commands: Sequence[Command], condition: Condition | None = None
) -> tuple[list[Any], list[Any]]:
    """KEYS and ARGV of ``WRITE_ALL`` for ``commands`` given as (redis-py method, arguments)."""
    keys: list[Any] = []
    argv: list[Any] = [b""]
    if condition is not None:
        keys, argv[0] = condition.arguments()
    recorder: _Arguments | None = None
    for method, args in commands:
        sent = _sent_directly(method, args)
        if sent is None:
            recorder = recorder or _Arguments()
            getattr(recorder, method)(*args)
            sent = recorder.sent.pop()
        name, key, *rest = sent
        keys.append(key)
        argv += [len(rest) + 1, name, *rest]
    return keys, argv


def task_arguments(commands: Sequence[Command]) -> tuple[list[Any], list[Any]] | None:
    """KEYS and ARGV of ``WRITE_TASK`` when ``commands`` are a record's ``hset`` of a mapping,
    its ``expire`` in whole seconds and a message's ``lpush``, in that order (what a submit
    without a guard writes); None for anything else, which ``WRITE_ALL`` writes."""
    if len(commands) != 3:
        return None
    (hset, record), (expire, timed), (lpush, pushed) = commands
    if hset != "hset" or expire != "expire" or lpush != "lpush" or len(pushed) != 2:
        return None
    fields = _sent_directly(hset, record)
    ttl = _sent_directly(expire, timed)
    if fields is None or ttl is None or ttl[1] != fields[1]:
        return None
    return [fields[1], pushed[0]], [ttl[2], pushed[1], *fields[2:]]


def _sent_directly(method: str, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """What redis-py's method sends for a submit's own writes (a record's ``hset`` of a
    mapping and its ``expire`` in whole seconds, a message's ``lpush``), without calling it
    through a recorder (a visible share of a submit's instructions); None for anything else,
    which the recorder then takes. ``tests/api/test_atomic_write.py`` compares both."""
    if method == "lpush":
        return ("LPUSH", *args)
    if method == "expire":
        if len(args) == 2 and type(args[1]) is int:
            return ("EXPIRE", *args)
    elif method == "hset" and len(args) == 4 and args[1] is None and args[2] is None:
        mapping = args[3]
        if type(mapping) is dict and mapping:
            sent: list[Any] = ["HSET", args[0]]
            for pair in mapping.items():
                sent += pair
            return tuple(sent)
    return None


def pack_command(args: Sequence[Any], encoder: Encoder) -> bytes:
    """The bytes redis-py's own packer sends for ``args`` (RESP: an array of bulk strings),
    in one pass: its packer calls its encoder per argument and re-formats the growing buffer
    per argument, a visible share of a submit's instructions for the ~20 arguments here.
    Short strings and integers (command and field names, the script's hash, task and queue
    names, counts) are packed once and remembered (``_PACKED``)."""
    encoding, errors = encoder.encoding, encoder.encoding_errors
    known = _PACKED.setdefault((encoding, errors), {})
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        kind = type(arg)
        if kind is str or kind is int:
            piece = known.get(arg)
            if piece is None:
                data = arg.encode(encoding, errors) if kind is str else b"%d" % arg
                piece = b"$%d\r\n%s\r\n" % (len(data), data)
                if len(data) <= _PACKED_LENGTH and len(known) < _PACKED_COUNT:
                    known[arg] = piece
            parts.append(piece)
            continue
        # Floats, and anything redis-py refuses: its encoder decides.
        data = arg if kind is bytes else bytes(encoder.encode(arg))  # type: ignore[no-untyped-call]
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


# Packed arguments by encoding, then by value: a str and an int never compare equal, and a
# bool or a float never gets here (type checks are exact). Bounded: the first values seen
# stay, which are the constants every write repeats; ids and timestamps are longer or floats.
_PACKED: dict[tuple[str, str], dict[str | int, bytes]] = {}
_PACKED_LENGTH = 40
_PACKED_COUNT = 1024


def _request(
    script: Script,
    keys: Sequence[Any],
    argv: Sequence[Any],
    replication: Replication,
    encoder: Encoder,
    full: bool,
) -> bytes:
    """The script call, and its ``WAIT`` pipelined behind it: still one round trip."""
    call = ("EVAL", script.text) if full else ("EVALSHA", script.sha)
    packed = pack_command((*call, len(keys), *keys, *argv), encoder)
    if replication.replicas:
        packed += pack_command(("WAIT", replication.replicas, replication.timeout_ms), encoder)
    return packed


def _outcome(reply: Any, error: Exception | None, acked: Any, replication: Replication) -> bool:
    """Whether the script wrote; raises what the replies say went wrong, the script's error
    first (a refused write)."""
    if error is not None:
        raise error
    if reply == -1:
        return False
    if replication.replicas and int(acked) < replication.replicas:
        raise NotReplicated(int(acked), replication.replicas, replication.timeout_ms)
    return True


async def write_all(
    client: AsyncRedis,
    commands: Sequence[Command],
    condition: Condition | None = None,
    replication: Replication = NO_WAIT,
) -> Written:
    """Run ``commands`` atomically in one round trip, then wait for ``replication``.
    ``NotReached`` when Redis could not be reached (nothing sent); ``ConditionFailed`` when
    ``condition`` did not hold (nothing written); ``NotReplicated`` when written on the primary
    but not acknowledged by enough replicas; any other error was raised after sending."""
    task = None if condition is not None else task_arguments(commands)
    if task is None:
        written = await write_script(client, *script_arguments(commands, condition), replication)
    else:
        written = await write_script(client, *task, replication, TASK)
    if not written.applied:
        raise ConditionFailed()
    return written


async def write_script(
    client: AsyncRedis,
    keys: list[Any],
    argv: list[Any],
    replication: Replication,
    script: Script = ALL,
) -> Written:
    """``write_all`` with its script arguments already made (a write made again, as it was);
    a condition that did not hold is ``Written.applied`` False, not an error."""
    pool = client.connection_pool
    if not replication.replicas:
        return await _pipelined(pool, script, keys, argv)
    connection = await take_connection(pool)
    try:
        for full in (False, True):
            packed = _request(script, keys, argv, replication, connection.encoder, full)
            await send(connection, packed)
            reply: Any = None
            error: Exception | None = None
            try:
                reply = await connection.read_response()
            except redis.exceptions.NoScriptError:
                if full:
                    raise
                error = _NOSCRIPT
            except redis.ResponseError as exc:
                error = exc
            acked = await connection.read_response()  # WAIT's: only a write with replicas gets here
            if error is not _NOSCRIPT:
                applied = _outcome(reply, error, acked, replication)
                return Written(address(connection), applied)
    except (redis.ResponseError, NotReplicated):
        raise  # an error reply, or WAIT's count: the connection is fine
    except BaseException:
        # No answer (timeout, cancellation, lost link): a late reply must not be read as the
        # answer to the next command sent on this connection.
        await connection.disconnect()
        raise
    finally:
        await give_back(pool, connection)
    raise AssertionError("unreachable")


async def _pipelined(pool: Any, script: Script, keys: list[Any], argv: list[Any]) -> Written:
    """``write_script`` without a ``WAIT``, sent with the other writes issued in the same turn
    of the event loop (``app.write_pipeline``): one send and one read for all of them, for the
    API and for redis-server. A ``WAIT`` is not pipelined: each blocks the connection until its
    replicas answer or its timeout, which would add up over the writes behind it."""
    encoder = _encoder(pool)
    try:
        reply, where = await pipelined_call(
            pool, _request(script, keys, argv, NO_WAIT, encoder, False)
        )
    except redis.exceptions.NoScriptError:
        # Nothing ran: the script in full, which also caches it.
        reply, where = await pipelined_call(
            pool, _request(script, keys, argv, NO_WAIT, encoder, True)
        )
    return Written(where, reply != -1)  # -1: its condition did not hold


def _encoder(pool: Any) -> Encoder:
    """The pool's encoder (what its connections encode arguments with), made once per pool."""
    encoder = _ENCODERS.get(pool)
    if encoder is None:
        encoder = _ENCODERS[pool] = pool.get_encoder()
    return encoder


_ENCODERS: weakref.WeakKeyDictionary[Any, Encoder] = weakref.WeakKeyDictionary()


# Stands for "the script was not cached": send it in full (NOSCRIPT ran nothing).
_NOSCRIPT = redis.exceptions.NoScriptError("NOSCRIPT")
