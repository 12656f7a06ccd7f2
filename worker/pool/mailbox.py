"""Celery's control mailbox with one reply per command from an inline worker.

Why: while an inline task holds the main thread, the pool's listener thread answers ``revoke``
and the read-only inspect commands (``worker/pool/revoke_listener.py``); the worker's event
loop gets its own copy of each broadcast (the mailbox is a fanout) and handles it once the task
is over. Replying again then would give a client still collecting (``celery inspect active``
without a destination waits ``timeout`` after each reply) two replies from one node: Celery's
``DuplicateNodenameWarning`` ("give each node a unique nodename"), and the later reply (no task
active, or ``tasks unknown`` after a terminate) in place of the first. So the listener records
the ticket of each command it answers, and the event loop's node, seeing that ticket, still runs
the command (a revoke's bookkeeping is Celery's) but sends no reply. The other way round too:
the event loop records what it answers, so a listener that reads a command only once the next
task has started (the event loop answered it between the two) does not answer it again.

Selected through Celery's ``control`` class (``create_celery_app``), not patched in; nodes other
than a worker's own are unaffected (nothing records a ticket outside the inline pool: only its
listener makes a process hold two nodes).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from celery.app.control import Control as CeleryControl
from kombu import pidbox

# Tickets kept at most: a ticket is dropped when the other node answers its copy; one the other
# never answers (an idle listener leaves commands to the event loop; a worker stopped first) is
# dropped after this many more.
ANSWERED_LIMIT = 1024


class AnsweredTickets:
    """Reply tickets answered by one of the worker's two nodes, shared by their threads."""

    def __init__(self, limit: int = ANSWERED_LIMIT) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._tickets: OrderedDict[str, None] = OrderedDict()
        # Set by the inline pool's listener: without a second node, nothing is recorded.
        self.shared = False

    def claim(self, ticket: str) -> bool:
        """Whether the caller answers ``ticket``: the first of the two copies does (and it is
        recorded), the second does not (and it is forgotten: one copy per node)."""
        if not self.shared:
            return True
        with self._lock:
            if self._tickets.pop(ticket, False) is None:
                return False
            self._tickets[ticket] = None
            while len(self._tickets) > self._limit:
                self._tickets.popitem(last=False)
            return True


ANSWERED = AnsweredTickets()


class Node(pidbox.Node):
    """The event loop's node (Celery's ``Pidbox``), and the listener's: each runs every command
    it is given and replies to those the other did not answer. Claimed before the reply: the
    other node may take its copy as soon as the reply is out."""

    def dispatch(
        self,
        method: str,
        arguments: dict[str, Any] | None = None,
        reply_to: dict[str, Any] | None = None,
        ticket: str | None = None,
        **kwargs: Any,
    ) -> Any:
        if reply_to and ticket and not ANSWERED.claim(ticket):
            reply_to = None
        return super().dispatch(method, arguments, reply_to, ticket, **kwargs)


class Mailbox(pidbox.Mailbox):
    node_cls = Node


class Control(CeleryControl):
    """``Celery(control=...)``: Celery's control client and worker mailbox, with ``Node``."""

    Mailbox = Mailbox
