"""A task's final state carried by the broker call that acknowledges the task.

Why: with the inline pool a task runs in the consumer's own thread, and its acknowledgement
already leaves at the event loop's next tick, inside the fetch that the freed credit asks for
(``worker/transport/channel.py``). Its result was one more script call and one more round trip
per task (``result_backend._GUARDED_SET``). When the result backend and the broker are the same
Redis, the backend hands the state to the channel that delivered the task instead, and the
channel writes it in that same script call, before the acknowledgement: one round trip per task.

The backend (core) and the channel (transport) meet here, so that imports keep running one way:
a channel registers itself as a ``Carrier``; the backend offers each final state it would store
(``offer``) and, when no carrier takes it, stores it as before. A carrier that took a state and
could not write it (the call failed, or its outcome is unknown) calls its ``store_again``: the
backend's normal path with its retries (storing twice is harmless: a finished state is never
overwritten).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

# Where a client connects, as far as "the same Redis" goes: server (or Sentinel service),
# database and credentials. Timeouts, pool sizes and TLS options do not change where data goes.
RedisIdentity = tuple[Any, ...]


def redis_identity(params: Mapping[str, Any], sentinel: Mapping[str, Any] | None) -> RedisIdentity:
    """Where a client with these connection parameters writes (redis-py's keywords, as kombu's
    ``_connparams`` and Celery's ``connparams`` both give them); with Sentinel, the service
    and its Sentinels stand for the server."""
    if sentinel:
        sentinels = tuple(sorted(tuple(address) for address in sentinel.get("sentinels", ())))
        server: tuple[Any, ...] = ("sentinel", sentinel.get("master_name"), sentinels)
    elif params.get("path"):
        server = ("unix", params["path"])
    else:
        server = ("tcp", params.get("host"), int(params.get("port") or 6379))
    credentials = (params.get("username"), params.get("password"))
    return (*server, int(params.get("db") or 0), *credentials)


@dataclass(frozen=True)
class CarriedState:
    """One final state, as the backend's script would have stored it (``store_state_unless_
    finished``: never over a finished state, the same TTL, the same PUBLISH)."""

    key: str  # the result's key
    value: str | bytes  # the stored meta, encoded
    ttl: int  # seconds; 0: no expiry
    delivery_tag: str  # the delivery whose acknowledgement carries it
    # Stored only where that delivery is recorded (Sentinel's rule, ``CourierSentinelBackend``).
    where_delivered: bool
    identity: RedisIdentity  # the backend's Redis
    # The backend's normal path, retried; raises when the state is still not stored.
    store_again: Callable[[], object]


class Carrier(Protocol):
    def carry(self, state: CarriedState) -> bool:
        """Take ``state`` to write with its delivery's acknowledgement, or refuse it (not this
        process's or thread's, not delivered here, another Redis, closing, ...)."""

    def flush_carried(self) -> None:
        """Write what it carries now: a task is about to run in this thread."""


_carriers: weakref.WeakSet[Any] = weakref.WeakSet()


def register(carrier: Carrier) -> None:
    _carriers.add(carrier)


def unregister(carrier: Carrier) -> None:
    _carriers.discard(carrier)


def carrying() -> bool:
    """Whether any carrier is registered in this process (prefork's children: none)."""
    return bool(_carriers)


def offer(state: CarriedState) -> bool:
    """Whether a carrier took ``state``; if not, the backend stores it itself."""
    return any(carrier.carry(state) for carrier in list(_carriers))


def flush_all() -> None:
    """Before a task runs: every state carried so far is sent first (or stored through the
    backend's path), so that the task (or whoever it reports to) does not wait on a
    predecessor's result for the whole run. One still in a fetch awaiting its reply is sent,
    not yet confirmed: its acknowledgement waits for that reply."""
    for carrier in list(_carriers):
        carrier.flush_carried()
