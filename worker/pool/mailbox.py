"""Celery's control mailbox with one reply per command from an inline worker.

Why: while an inline task holds the main thread, the pool's listener thread answers ``revoke``
and the read-only inspect commands (``worker/pool/revoke_listener.py``); the worker's event
loop gets its own copy of each broadcast (the mailbox is a fanout) and handles it once the task
is over. Replying again then would give a client still collecting (``celery inspect active``
without a destination waits ``timeout`` after each reply) two replies from one node: Celery's
``DuplicateNodenameWarning`` ("give each node a unique nodename"), and the later reply (no task
active, or ``tasks unknown`` after a terminate) in place of the first. So the listener records
the ticket of each command it answers, and the event loop's node, seeing that ticket, still runs
the command (a revoke's bookkeeping is Celery's) but sends no reply.

Selected through Celery's ``control`` class (``create_celery_app``), not patched in; nodes other
than a worker's own are unaffected (nothing records a ticket outside the inline pool).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from celery.app.control import Control as CeleryControl
from kombu import pidbox

# Tickets kept at most: a ticket is dropped when the event loop sees its copy; one never seen
# (the worker stopped first) is dropped after this many more.
ANSWERED_LIMIT = 1024


class AnsweredTickets:
    """Reply tickets the listener thread answered; read by the event loop's thread."""

    def __init__(self, limit: int = ANSWERED_LIMIT) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._tickets: OrderedDict[str, None] = OrderedDict()

    def add(self, ticket: str) -> None:
        with self._lock:
            self._tickets[ticket] = None
            while len(self._tickets) > self._limit:
                self._tickets.popitem(last=False)

    def take(self, ticket: str) -> bool:
        """Whether ``ticket`` was answered; forgotten once asked (one copy per node)."""
        with self._lock:
            return self._tickets.pop(ticket, False) is None


ANSWERED = AnsweredTickets()


class Node(pidbox.Node):
    """The event loop's node (Celery's ``Pidbox``): runs every command, replies to those the
    listener did not answer."""

    # Whether this node answers for a busy event loop (the listener's) rather than being it.
    answers_for_event_loop = False

    def dispatch(
        self,
        method: str,
        arguments: dict[str, Any] | None = None,
        reply_to: dict[str, Any] | None = None,
        ticket: str | None = None,
        **kwargs: Any,
    ) -> Any:
        if reply_to and ticket:
            if self.answers_for_event_loop:
                # Before the reply: the event loop may take its copy as soon as the task ends.
                ANSWERED.add(ticket)
            elif ANSWERED.take(ticket):
                reply_to = None
        return super().dispatch(method, arguments, reply_to, ticket, **kwargs)


class AnsweringNode(Node):
    """The listener's node: records the ticket of each command it replies to."""

    answers_for_event_loop = True


class Mailbox(pidbox.Mailbox):
    node_cls = Node


class Control(CeleryControl):
    """``Celery(control=...)``: Celery's control client and worker mailbox, with ``Node``."""

    Mailbox = Mailbox
