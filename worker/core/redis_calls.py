"""One Redis round trip as data, sent by a blocking client (the worker) or an asyncio one (the API).

The stores the worker and the API share (``records``, ``artifacts``, ``dead_letters``) say once
what an operation sends (a Lua script with its keys and arguments, or commands for one
MULTI/EXEC) and how its reply reads, as a ``Call``; ``Call.run`` and ``Call.run_async`` are the
only places that differ by client. So the scripts, key names, argument building and reply
parsing have one home whichever side calls, and neither side pays a thread hop for the other's
client: the worker's pool is synchronous, the API's is the event loop.

A script goes as ``EVALSHA``, and once in full (``EVAL``, which caches it) when Redis answers
``NOSCRIPT`` (restarted, or ``SCRIPT FLUSH``): what redis-py's ``register_script`` does, for
either client.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import redis
import redis.asyncio
from redis.exceptions import NoScriptError

from worker.core.redis_client import Command, queue_commands

T = TypeVar("T")


@dataclass(frozen=True)
class Lua:
    """A script's source and its SHA1 (what ``EVALSHA`` names), computed once: scripts are
    module constants."""

    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


def _same(reply: Any) -> Any:
    return reply


@dataclass(frozen=True)
class Call(Generic[T]):
    """One round trip: a script call (``script``, ``keys``, ``args``), ``commands`` in one
    MULTI/EXEC, or one ``command`` on its own (a read that must work while a full Redis refuses
    every command queued into a transaction); and ``parse``, which turns Redis's reply (a list
    of the replies, for ``commands``) into the operation's result, or raises its error."""

    parse: Callable[[Any], T] = _same
    script: Lua | None = None
    keys: Sequence[Any] = ()
    args: Sequence[Any] = ()
    commands: Sequence[Command] = ()
    command: Command | None = None

    def _evalsha(self) -> tuple[Any, ...]:
        assert self.script is not None
        return (self.script.sha, len(self.keys), *self.keys, *self.args)

    def _eval(self) -> tuple[Any, ...]:
        assert self.script is not None
        return (self.script.source, *self._evalsha()[1:])

    def run(self, client: redis.Redis) -> T:
        """Send on the worker's blocking client."""
        if self.command is not None:
            return self.parse(getattr(client, self.command[0])(*self.command[1]))
        if self.script is None:
            pipe = client.pipeline(transaction=True)
            queue_commands(pipe, self.commands)
            return self.parse(pipe.execute())
        try:
            reply = client.evalsha(*self._evalsha())
        except NoScriptError:
            reply = client.eval(*self._eval())
        return self.parse(reply)

    async def run_async(self, client: redis.asyncio.Redis) -> T:
        """Send on the API's asyncio client: the same bytes, the same parse."""
        if self.command is not None:
            return self.parse(await getattr(client, self.command[0])(*self.command[1]))
        if self.script is None:
            pipe = client.pipeline(transaction=True)
            queue_commands(pipe, self.commands)
            return self.parse(await pipe.execute())
        try:
            reply = await client.evalsha(*self._evalsha())
        except NoScriptError:
            reply = await client.eval(*self._eval())
        return self.parse(reply)
