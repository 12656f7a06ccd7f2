"""A channel's carried final states: offered by the result backend, written by the next call that
carries acknowledgements (``FETCH`` or ``ACK``), before them (``worker/core/result_carry.py``).

Kept apart from ``channel.py``: which states a channel takes, how they ride in a call's
arguments, and what happens to those a call did not store. The channel decides when a call goes.

A state leaves ``pending`` with the call that carries it. When that call fails or its outcome is
unknown, every state it carried is stored again through the backend's normal path
(``store_again``, with its retries) before any acknowledgement is sent again: an
acknowledgement is never applied without its task's state, only the other way round (a state
stored twice, or a message left in ``unacked`` for the restore sweep, as when an ACK is lost).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable

from worker.core.result_carry import CarriedState, RedisIdentity

logger = logging.getLogger(__name__)


class CarriedStates:
    """The states one channel carries; owned by the thread that created it, its event loop's."""

    def __init__(self, identity: RedisIdentity) -> None:
        self.identity = identity
        self.pending: list[CarriedState] = []  # offered since the last call that carried
        self.in_flight: list[CarriedState] = []  # carried by the fetch awaiting its reply
        self._pid = os.getpid()
        self._thread = threading.get_ident()
        self._storing_again = False

    def accepts(self, state: CarriedState) -> bool:
        """Only this process's event-loop thread (the inline pool's tasks run there; a pool
        thread or a forked child stores its own), the same Redis, and not while this channel
        stores states again (the backend's normal path then offers them once more)."""
        return (
            not self._storing_again
            and threading.get_ident() == self._thread
            and os.getpid() == self._pid
            and state.identity == self.identity
        )

    def take_pending(self) -> list[CarriedState]:
        taken, self.pending = self.pending, []
        return taken

    def held_tags(self) -> set[str]:
        """Deliveries whose state is in the fetch in flight: their acknowledgements wait for
        its reply (sent before it, another connection could apply them first)."""
        return {state.delivery_tag for state in self.in_flight}

    def store_again(self, states: Iterable[CarriedState]) -> set[str]:
        """Through the backend's normal path, retried; the delivery tags whose state is still
        not stored (their acknowledgement must not be sent: the message stays in ``unacked``
        and comes back after the visibility timeout, to run again)."""
        lost: set[str] = set()
        self._storing_again = True
        try:
            for state in states:
                if lost:
                    # The first ran out of the backend's retries (minutes, on the event loop):
                    # the others would too, one after another. Their messages run again.
                    lost.add(state.delivery_tag)
                    continue
                try:
                    state.store_again()
                except Exception as exc:
                    lost.add(state.delivery_tag)
                    logger.error(
                        "carried task state not stored; its message goes back: %r",
                        exc,
                        extra={"key": state.key},
                    )
        finally:
            self._storing_again = False
        return lost


def carried_arguments(states: list[CarriedState]) -> list[str | bytes | int]:
    """The arguments ``scripts._STORE_CARRIED_LUA`` reads: the count, then per state its key,
    value, TTL and the tag its ``unacked`` entry must hold ('' for none)."""
    arguments: list[str | bytes | int] = [len(states)]
    for state in states:
        needs = state.delivery_tag if state.where_delivered else ""
        arguments += [state.key, state.value, state.ttl, needs]
    return arguments
