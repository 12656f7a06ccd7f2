"""Hears ``revoke(terminate=True)``, and answers ``celery inspect``, while the inline pool's task
holds the main thread.

Celery handles control commands on the worker's event loop, in the main thread, which a task run
inline occupies until it returns: a terminate would only be read once there was nothing left to
terminate. This thread keeps a broker connection of its own and consumes the worker's broadcast
mailbox (the same pidbox queue, the same fanout exchange, through kombu's pidbox ``Node``:
destinations and patterns match as Celery matches them), so any client (``DELETE
/v1/tasks/{id}?terminate=true``, ``app.control.revoke(id, terminate=True)``, Flower's terminate,
``celery control revoke``) is heard while the task runs. While a task runs it answers a revoke
as Celery's handler would (a client waiting for replies, such as ``celery control revoke``,
hears from a busy worker as from a prefork one); the event loop still gets the same command
once the task is over and does Celery's own bookkeeping, without a second reply (the ticket the
listener answered is recorded: ``worker/pool/mailbox.py``). The pool is told every revoke: a
terminate stops the running task, and every revoked id is known to the worker before its event
loop takes the next message (which may be one of them: prefork's event loop would have read the
revoke while the task ran).

While a task runs it also answers Celery's read-only inspect commands (``INSPECT_WHILE_BUSY``:
``celery inspect active|stats|ping|...``, Flower's worker pages), which would otherwise go
unanswered until the task ends, with Celery's own handlers (``celery.worker.control.Panel``) and
the consumer's state, as the event loop does; only the state's ``tset`` differs: it copies
Celery's request sets before they are read (Celery's choice when it has no event loop), since the
main thread may change them as the task ends. These handlers only read (the request sets and
dicts, the task registry, the configuration, the pool's info), so they are safe from this thread.
Commands that change the worker (``rate_limit``, ``pool_grow``, ``shutdown``, ...) stay with the
event loop. As for revoke, the event loop runs the same command once the task is over but does
not reply again (``worker/pool/mailbox.py``).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Collection
from typing import Any

from billiard.common import TERM_SIGNAME
from celery import Celery
from celery.platforms import signals as celery_signals
from celery.utils.collections import AttributeDict
from celery.worker.control import Panel
from kombu.utils.functional import maybe_list

from worker.pool.mailbox import ANSWERED, Node

logger = logging.getLogger(__name__)

# Seconds a wait for a broadcast lasts before it is made again. Not what a stop waits for: stop
# wakes the wait at once (``_wake``).
POLL_SECONDS = 1.0
# Seconds before each reconnect after a lost broker, the first at once: a broadcast sent while
# the listener is not subscribed is not heard (as by any worker's event loop while it reconnects).
RETRY_SECONDS = (0.0, 0.1, 0.25, 0.5)

# Celery's inspect commands answered while a task runs (the others are answered between tasks):
# each only reads the worker's state. Not ``hello`` (it updates the revoked set), nor the
# debugging ones (``objgraph`` writes a file; ``memsample`` and ``memdump`` keep samples).
INSPECT_WHILE_BUSY = frozenset(
    {
        "active",
        "active_queues",
        "clock",
        "conf",
        "ping",
        "query_task",
        "registered",
        "report",
        "reserved",
        "revoked",
        "scheduled",
        "stats",
    }
)
# The same handlers under every name Celery knows them by (``dump_active``, ``dump_tasks``, ...).
INSPECT_HANDLERS: dict[str, Callable[..., Any]] = {
    name: handler for name, handler in Panel.data.items() if handler.__name__ in INSPECT_WHILE_BUSY
}

# The pool's action on a revoke: (task ids, terminate, signal number) -> the id of the running
# task it stopped, if it stopped one.
OnRevoke = Callable[[Collection[str], bool, int], str | None]


class RevokeListener:
    def __init__(
        self, app: Celery, hostname: str, on_revoke: OnRevoke, busy: Callable[[], bool]
    ) -> None:
        self.app = app
        self.hostname = hostname
        self._on_revoke = on_revoke
        self._busy = busy
        self._stopped = threading.Event()
        self._failures = 0  # connection attempts failed in a row
        # What Celery's inspect handlers read (``inspect_with``); None until the worker's
        # consumer is ready: until then inspect commands are left to the event loop.
        self._inspect_state: AttributeDict | None = None
        # The channel the listener waits on, while it waits (stop wakes it: _wake).
        self._channel: Any = None
        self._thread = threading.Thread(
            target=self._run, daemon=True, name="courier-pool-revoke-listener"
        )

    def start(self) -> None:
        ANSWERED.shared = True  # two nodes in this process from now on: one reply per command
        self._thread.start()

    def inspect_with(self, consumer: Any) -> None:
        """Answer inspect commands for ``consumer`` (the worker's, once ready) while a task
        runs: the state Celery's ``Pidbox`` gives its handlers, except ``tset``, which copies
        a request set before it is read (the main thread may change it meanwhile)."""
        self._inspect_state = AttributeDict(
            app=consumer.app, hostname=consumer.hostname, consumer=consumer, tset=set
        )

    def stop(self) -> None:
        self._stopped.set()
        self._wake()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=POLL_SECONDS + 1)

    def _wake(self) -> None:
        """End the listener's wait for a broadcast now rather than at its timeout: an idle
        inline worker's stop otherwise waited out up to ``POLL_SECONDS`` here (0.8 s of its
        1.5-2 s). Shutting the subscription's socket down (not closing it: the listener's
        thread still owns it) makes it readable at end of file; the wait raises, and the
        listener, stopped, closes its connection on the way out."""
        sock = _subscription_socket(self._channel) if self._channel is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed: nothing waits on it
                sock.shutdown(socket.SHUT_RDWR)

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self._listen()
            except Exception as exc:  # a lost broker: the event loop reports it; try again
                if self._stopped.is_set():
                    break  # woken by stop (_wake), not a lost broker
                if not self._failures:
                    logger.warning("revoke listener reconnecting", extra={"error": repr(exc)})
                self._stopped.wait(RETRY_SECONDS[min(self._failures, len(RETRY_SECONDS) - 1)])
                self._failures += 1

    def _listen(self) -> None:
        with self.app.connection_for_read() as connection:
            channel = connection.channel()
            control: Any = self.app.control  # its mailbox is missing from Celery's stubs
            node = Node(
                self.hostname,
                channel=channel,
                handlers={**INSPECT_HANDLERS, "revoke": self._revoke},
                mailbox=control.mailbox,
            )

            def on_message(body: Any, message: Any) -> None:
                method = body.get("method") if isinstance(body, dict) else None
                if method == "revoke":
                    # An idle worker's event loop answers at once, as any worker's.
                    answered = body if self._busy() else {**body, "reply_to": None}
                    node.handle_message(answered, message)
                elif method in INSPECT_HANDLERS and self._inspect_state and self._busy():
                    # Idle (or not ready yet), the event loop answers at once.
                    node.state = self._inspect_state
                    node.handle_message(body, message)

            with node.listen(callback=on_message):
                if self._failures:
                    logger.info("revoke listener connected again")
                    self._failures = 0
                self._channel = channel
                try:
                    while not self._stopped.is_set():
                        with contextlib.suppress(TimeoutError):
                            connection.drain_events(timeout=POLL_SECONDS)
                finally:
                    self._channel = None

    def _revoke(
        self, state: Any, task_id: Any, terminate: bool = False, signal: Any = None, **_: Any
    ) -> dict[str, str]:
        """Celery's ``revoke`` control command, as far as the pool takes part; its reply."""
        task_ids = {str(each) for each in maybe_list(task_id) or ()}
        signum = celery_signals.signum(signal or TERM_SIGNAME)
        stopped = self._on_revoke(task_ids, bool(terminate), signum)
        if stopped:
            # Celery's own line when its event loop terminates a task (worker/control.py).
            logger.info("Terminating %s (%s)", stopped, signum)
        if terminate:
            # Celery's reply names the tasks it stopped, not all it was given.
            return {"ok": f"terminate: {stopped or 'tasks unknown'}"}
        return {"ok": f"tasks {task_ids} flagged as revoked"}


def _subscription_socket(channel: Any) -> socket.socket | None:
    """The socket of the Redis connection a kombu Redis channel's broadcast subscription reads
    (its pub/sub client, made by ``node.listen``); None if it has none (yet). Read from the
    channel's ``__dict__``: ``subclient`` is a cached property, which a plain read would make."""
    subclient = vars(channel).get("subclient")
    connection = getattr(subclient, "connection", None)
    sock = getattr(connection, "_sock", None)
    return sock if isinstance(sock, socket.socket) else None
