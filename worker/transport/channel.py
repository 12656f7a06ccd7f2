"""The channel: atomic fetch over the queue lists, blocking peeks to wait, kombu's bookkeeping.

How one channel consumes (``worker/transport/__init__.py`` says why):
- *fetch*: while the QoS gives credit and messages may be waiting, one ``FETCH`` script is in
  flight on the channel's own connection (sent without waiting, read when the event loop sees
  the reply): it takes up to the credit from the lists in priority order and records each
  message in ``unacked`` in the same step. A reply that never arrives loses nothing: what the
  script took is in ``unacked`` and comes back after the visibility timeout.
- *wait*: when a fetch found nothing, one connection per list blocks in ``BLMOVE list list
  RIGHT RIGHT`` (a peek: the tail moves onto itself, the list is unchanged). Its reply only says
  "something arrived"; the next fetch takes it. A peek answered into a dead link takes nothing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from queue import Empty
from time import monotonic, time
from typing import Any, cast

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.imports import symbol_by_name
from kombu.utils.json import dumps, loads

from worker.core import result_carry
from worker.core.envelope import Checked
from worker.core.names import DELIVERY_TAG_HEADER
from worker.core.redis_client import refusal_code
from worker.core.result_carry import CarriedState
from worker.transport import headroom, scripts
from worker.transport.carry import CarriedStates, carried_arguments
from worker.transport.stamp import START_CHECK_HEADER, StampSource

logger = logging.getLogger(__name__)

FETCH = "FETCH"
_NOT_SCREENED = object()  # a Message whose body the screen did not decode
FETCHED_FIELDS = 4  # per message in FETCH's reply: list position, tag, raw message, start check
FETCHED_FROM = 1  # FETCH's reply: the tags of carried states not stored, then the messages
# Packed fetches kept per channel: one per order of its lists (queues rotate), a few in practice.
MAX_PACKINGS = 64
# Screens a fetched message before delivery: ``screen(connect, raw, queue, *, source,
# delivery_tag)`` returns the message checked (``envelope.Checked``: the decoded envelope and
# body), or None when it took the message out of the way, through a client from ``connect()``
# (``worker.core.dead_letters.DeadLetterScreen``); raises a Redis error when it could not (the
# message stays in ``unacked``).
Screen = Callable[..., Checked | None]

# kombu's stubs describe its public API; these classes extend its internals, so they are
# subclassed as what they are at run time, untyped.
_KombuQoS: Any = kombu_redis.QoS
_KombuMessage: Any = virtual.Message
_KombuChannel: Any = kombu_redis.Channel
_socket_readable: Callable[[Any], bool] = kombu_redis._socket_readable  # type: ignore[attr-defined]


def with_fetch_headers(payload: Any, check: bytes | str, delivery_tag: str = "") -> Any:
    """The envelope with the fetch's start check (and, with Sentinel, its delivery tag) in its
    headers, and with no such headers otherwise, whatever the producer wrote there: only a
    fetch may tell a task it was stamped, or where it was delivered."""
    headers = payload.get("headers") if isinstance(payload, dict) else None
    if isinstance(headers, dict):
        for name, value in ((START_CHECK_HEADER, check), (DELIVERY_TAG_HEADER, delivery_tag)):
            if value:
                headers[name] = bytes_to_str(value)
            else:
                headers.pop(name, None)
    return payload


class Message(_KombuMessage):  # type: ignore[misc]
    """kombu's message, taking the body the screen decoded instead of decoding it again.

    The dead-letter screen decodes every task message's body as kombu does (base64, kombu's
    JSON) to check it; Celery's strategy then reads ``message.payload``, which decoded the same
    bytes a second time in the worker's main process. The channel hands the screen's body over
    with the envelope it delivers (``Channel._screened_body``: the envelope, by identity, and its
    body); ``_decode`` returns it once, after the same ``accept`` check kombu's would make.
    """

    def __init__(self, payload: Any, channel: Any = None, **kwargs: Any) -> None:
        super().__init__(payload, channel=channel, **kwargs)
        self._screened = _NOT_SCREENED
        handed = getattr(channel, "_screened_body", None)
        if handed is not None and handed[0] is payload:
            self._screened = handed[1]
            channel._screened_body = None

    def _decode(self) -> Any:
        body, self._screened = self._screened, _NOT_SCREENED
        if body is not _NOT_SCREENED and (self.accept is None or self.content_type in self.accept):
            return body
        return super()._decode()


class QoS(_KombuQoS):  # type: ignore[misc]
    """kombu's Redis QoS, minus the ``unacked`` write (the fetch made it), acked in one step."""

    def append(self, message: Any, delivery_tag: str) -> None:
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        # Sent at the event loop's next tick (``Channel.flush_acks``, the poller's poll start:
        # microseconds later, never after a wait), with every ack of the same tick, inside the
        # fetch their freed credit asks for when messages may be waiting, else in one ACK call.
        if delivery_tag in self.channel.not_to_ack:
            # Its final state could not be stored and its message went back (``_store_again``):
            # an acknowledgement now could remove the entry of the worker that fetched it next.
            self.channel.not_to_ack.discard(delivery_tag)
        elif self.channel.closed or self.channel._detached():
            # No tick will come for this channel: sent now (a connection error when it is gone).
            self.channel.send_acks([delivery_tag])
        else:
            self.channel.pending_acks.append(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        # A refusing Redis (full: the mutex's SET is refused) is no reason to stop the worker,
        # which kombu's start-up call would: the sweep runs again at its next interval.
        try:
            super().restore_visible(*args, **kwargs)
        except redis.ResponseError as exc:
            if refusal_code(exc) is None:
                raise
            logger.warning("abandoned messages not restored yet: %s", exc)

    def restore_by_tag(self, tag: Any, client: Any = None, leftmost: bool = False) -> None:
        # kombu's, except that an entry it cannot read is logged and left, instead of raising
        # out of the sweep and stopping it before the other entries.
        def restore_transaction(pipe: Any) -> None:
            entry = pipe.hget(self.unacked_key, tag)
            if entry:
                try:
                    message, exchange, routing_key = loads(bytes_to_str(entry))
                except (ValueError, TypeError, RecursionError):
                    logger.error("unreadable unacked entry left in place", extra={"tag": tag})
                    return
            pipe.multi()
            self._remove_from_indices(tag, pipe)
            if entry:
                self.channel._do_restore_message(message, exchange, routing_key, pipe, leftmost)

        with self.channel.conn_or_acquire(client) as client:
            client.transaction(restore_transaction, self.unacked_key)


def _unreadable(exc: redis.exceptions.InvalidResponse) -> redis.ConnectionError:
    """A reply redis-py could not parse (garbled or cut on a dying link; redis-py dropped the
    connection) as the connection error it is, which Celery's consumer recovers from by
    connecting again: Celery takes any other error out of the event loop for fatal."""
    return redis.ConnectionError(f"unreadable reply: {exc}")


def _bulk(value: bytes) -> bytes:
    """One argument in the Redis protocol (RESP's bulk string)."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _encoded(value: str | int | bytes) -> bytes:
    """As redis-py encodes a str, bytes or an int argument."""
    if isinstance(value, bytes):
        return value
    return value.encode() if isinstance(value, str) else str(value).encode()


class FetchPacking:
    """``FETCH``'s EVALSHA in the Redis protocol, its constant part packed once.

    Why: of its arguments (the keys, one spec per list, the start stamp's JSON settings: ~12
    with one queue), only the limit, the delivery time, the carried states and the carried
    acknowledgements change between fetches; redis-py encoded and packed all of them again at
    every fetch, about one per task at concurrency 2 (7 % of a prefork worker's main process in
    a cProfile of a drain).
    """

    def __init__(self, keys: list[str], constants: list[str]) -> None:
        command: list[str | int] = ["EVALSHA", scripts.FETCH_SHA, len(keys), *keys]
        self._head = b"".join(_bulk(_encoded(part)) for part in command)
        self._constants = b"".join(_bulk(_encoded(arg)) for arg in constants)
        self._fixed_count = 3 + len(keys) + 2 + len(constants)  # all but states and acks

    def command(
        self, limit: int, now: float, acks: list[str], carried: Sequence[str | bytes | int] = (0,)
    ) -> bytes:
        """The whole command: ``limit`` and ``now`` (ARGV[1], ARGV[2]), then after the
        constants the carried states (``carry.carried_arguments``) and the acks, as redis-py
        would write them (a float as its ``repr``)."""
        return b"".join(
            (
                b"*%d\r\n" % (self._fixed_count + len(carried) + len(acks)),
                self._head,
                _bulk(b"%d" % limit),
                _bulk(repr(now).encode()),
                self._constants,
                *(_bulk(_encoded(arg)) for arg in carried),
                *(_bulk(tag.encode()) for tag in acks),
            )
        )


@dataclass
class Waiter:
    """One list's blocking peek: its own connection, and when its BLMOVE was sent."""

    key: str
    client: Any  # redis.Redis, holding its connection
    sent_at: float | None = None

    @property
    def kind(self) -> str:
        return f"WAIT {self.key}"


class Channel(_KombuChannel):  # type: ignore[misc]
    QoS = QoS
    Message = Message

    from_transport_options = (
        *kombu_redis.Channel.from_transport_options,
        "fetch_limit",
        "wait_timeout",
        "message_screen",
        "start_stamp",
        "acks_on_own_connection",
        "carry_results",
    )
    #: Most messages one fetch takes (the QoS credit bounds it first).
    fetch_limit = 32
    #: Server-side timeout of a blocking peek; None: the transport's ``brpop_timeout``.
    wait_timeout: float | None = None
    #: A ``Screen``, or its dotted path; None: kombu's decoding only.
    message_screen: Screen | str | None = None
    #: A ``stamp.StampSource``, or its dotted path; None: no start stamp at fetch.
    start_stamp: StampSource | str | None = None
    #: Acknowledgements only on the connection whose fetches delivered the messages, never
    #: through a new one (``SentinelChannel``; ``_ack_on_own_connection`` says why).
    acks_on_own_connection = False
    #: Final states of the tasks it delivered are written by the call carrying their
    #: acknowledgement (``worker/core/result_carry.py``): set for the inline pool.
    carry_results = False
    #: When Redis last refused a peek (full): peeks pause, fetches poll (``headroom``).
    _peek_refused_at = float("-inf")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._waiters: dict[str, Waiter] = {}
        self._fetching: list[tuple[str, str]] | None = None  # (list, queue) of the fetch in flight
        self._fetch_acks: list[str] = []  # acknowledgements carried by the fetch in flight
        # Acknowledged since the last poll start: sent by the next fetch or flush_acks.
        self.pending_acks: list[str] = []
        # Deliveries whose final state was not stored: never acknowledged (``_store_again``).
        self.not_to_ack: set[str] = set()
        self._fetch_sent_at: float | None = None
        self._maybe_ready = True  # messages may be waiting: fetch before waiting
        # Replaced, never changed in place: the fetch's packing compares it (``_fetch_packing``).
        self._no_ack_queues: frozenset[str] = frozenset()
        self._packings: dict[tuple[Any, ...], FetchPacking] = {}
        # The last screened envelope and its decoded body, until its Message takes the body.
        self._screened_body: tuple[dict[str, Any], Any] | None = None
        self.carried: CarriedStates | None = None  # with carry_results, once consuming
        super().__init__(*args, **kwargs)
        if self.global_keyprefix:
            raise ValueError("Courier's transport does not support global_keyprefix")
        self.handlers[FETCH] = self._fetch_read
        client = self._create_client()
        self.fetch_script = client.register_script(scripts.FETCH)
        self.ack_script = client.register_script(scripts.ACK)
        self.push_past_maxmemory = client.register_script(headroom.PUSH)
        self.bind_past_maxmemory = client.register_script(headroom.BIND)
        self.refresh_binding_past_maxmemory = client.register_script(
            headroom.ALLOW_OOM + kombu_redis.REFRESH_BINDING  # type: ignore[attr-defined]
        )
        if isinstance(self.message_screen, str):
            self.message_screen = symbol_by_name(self.message_screen)
        if isinstance(self.start_stamp, str):
            self.start_stamp = symbol_by_name(self.start_stamp)

    # --- what kombu's poller calls ---

    def consume(self) -> None:
        """The event loop may take more: fetch when something may be waiting, else wait."""
        if self._fetch_sent_at is not None:
            return
        if self._maybe_ready:
            self._fetch_carrying_acks()
        else:
            self._arm_waiters()

    def drop_overdue_connections(self, now: float) -> None:
        """Disconnect a connection whose reply is overdue: a half-open link never answers and
        the event loop has no socket timeout (kombu does the same for its BRPOP)."""
        grace = self.health_check_interval
        if not grace:
            return
        pending: list[tuple[Any, float, float]] = []
        client = self.__dict__.get("client")
        if self._fetch_sent_at is not None and client is not None:
            pending.append((client.connection, self._fetch_sent_at, 0.0))
        for waiter in self._waiters.values():
            if waiter.sent_at is not None:
                pending.append((waiter.client.connection, waiter.sent_at, self._wait_timeout()))
        for connection, sent_at, bound in pending:
            sock = getattr(connection, "_sock", None)
            waited = now - sent_at
            if waited < bound + grace or sock is None or _socket_readable(sock):
                continue
            logger.warning("Redis did not answer for %.0f s; dropping the connection", waited)
            connection.disconnect()

    def _poll_error(self, type: str, **options: Any) -> Any:
        if type == "LISTEN":
            return super()._poll_error(type, **options)
        return self.handlers[type]()  # reads the error, and raises it

    def _on_connection_disconnect(self, connection: Any) -> None:
        client = self.__dict__.get("client")
        if client is not None and client.connection is connection:
            # The fetch's fate is unknown: what it took is in unacked, restored by the sweep.
            self._fetch_sent_at = self._fetching = None
            self._maybe_ready = True
            self._resend_acks()
            if self.carried is not None:  # the channel may never tick again (a reconnect)
                self._store_again(self.carried.take_pending())
        for waiter in self._waiters.values():
            if waiter.client.connection is connection:
                waiter.sent_at = None
                self._maybe_ready = True  # its reply may have said "something arrived"
        super()._on_connection_disconnect(connection)

    # --- acknowledgements ---

    def send_acks(self, tags: list[str]) -> None:
        """Acknowledge ``tags`` in one ACK script call, on a pooled connection (or, with
        ``acks_on_own_connection``, on the fetches' own), with the states carried so far
        written first. A call that fails stores those states again (``carry``) and raises."""
        states = self.carried.take_pending() if self.carried is not None else []
        try:
            if self.acks_on_own_connection and self._own_connection() is not None:
                unstored = self._ack_on_own_connection(tags, states)
            else:
                with self.conn_or_acquire() as client:
                    unstored = self.ack_script(
                        keys=[self.unacked_key, self.unacked_index_key],
                        args=[*carried_arguments(states), *tags],
                        client=client,
                    )
        except redis.exceptions.InvalidResponse as exc:
            self._store_again(states)
            raise _unreadable(exc) from exc
        except BaseException:
            self._store_again(states)
            raise
        if states:
            self._store_unstored(states, unstored)

    def flush_acks(self) -> None:
        """The acknowledgements (and carried states) of this tick that no fetch carried, in
        one ACK script call.

        Should Redis not take them, the messages stay in unacked and come back after the
        visibility timeout, where the runner skips them as finished duplicates."""
        if self.acks_on_own_connection and self._fetch_sent_at is not None:
            return  # the own connection awaits a fetch's reply: the next fetch or tick
        held = self.carried.held_tags() if self.carried is not None else set()
        if held:
            tags = [tag for tag in self.pending_acks if tag not in held]
            self.pending_acks = [tag for tag in self.pending_acks if tag in held]
        else:
            tags, self.pending_acks = self.pending_acks, []
        if tags or (self.carried is not None and self.carried.pending):
            self.send_acks(tags)

    # --- carried final states (worker/core/result_carry.py) ---

    def carry(self, state: CarriedState) -> bool:
        """A ``result_carry.Carrier``: takes the final state of a task this channel delivered
        and has not acknowledged yet, to write with that acknowledgement."""
        carried = self.carried
        if carried is None or self.closed or not carried.accepts(state):
            return False
        if state.delivery_tag not in self.qos._delivered:
            return False
        carried.pending.append(state)
        return True

    def flush_carried(self) -> None:
        """Before a task runs in this thread: what was carried so far is written now."""
        if self.carried is None or not self.carried.pending:
            return
        if self.acks_on_own_connection and self._fetch_sent_at is not None:
            self._store_again(self.carried.take_pending())  # the acks wait for the reply
            return
        with contextlib.suppress(*self.connection_errors):  # stored again, acks as flush_acks
            self.flush_acks()

    def _store_again(self, states: list[CarriedState]) -> set[str]:
        """``carry.CarriedStates.store_again``; a message whose state is still not stored
        goes back to its queue, as the backend's ``ResultNotStored`` sends it (else the
        restore sweep brings it back), to run again where the start check decides."""
        if not states or self.carried is None:
            return set()
        lost = self.carried.store_again(states)
        if lost:
            # Their acknowledgements are withdrawn, made or to come: applied, one would leave
            # the task with no state and no message (it would read ``started`` for good).
            self.pending_acks = [tag for tag in self.pending_acks if tag not in lost]
            self._fetch_acks = [tag for tag in self._fetch_acks if tag not in lost]
            # Acks still to come: delivered, not yet acknowledged (kombu's dirty set).
            self.not_to_ack |= (lost & self.qos._delivered.keys()) - self.qos._dirty
            with contextlib.suppress(redis.RedisError):  # left in unacked: the sweep's
                self._restore_tags(sorted(lost))
        return lost

    def _store_unstored(self, states: list[CarriedState], unstored: Any) -> None:
        """The states a call did not store (their delivery not recorded on that server:
        Sentinel's rule): stored again through the backend's own path, as any other."""
        if unstored:
            tags = {bytes_to_str(tag) for tag in unstored}
            self._store_again([state for state in states if state.delivery_tag in tags])

    def _own_connection(self) -> Any:
        """The connection the fetches use, once they have used it (None before)."""
        client = self.__dict__.get("client")
        return getattr(client, "connection", None)

    def _ack_on_own_connection(self, tags: list[str], states: list[CarriedState]) -> Any:
        """Why, with Sentinel: a failover leaves a moment in which the old primary still takes
        writes (until its last replica leaves it) while a new connection already reaches the
        new primary. A task whose result went to the old primary in that moment (lost with
        it) must not have its acknowledgement applied on the new one, where its status would
        stay ``started`` for good. The fetch's connection reached the server that delivered the
        messages; while it stays connected it is that server still. Once it was dropped, the
        acknowledgements are not sent at all: the messages come back after the visibility
        timeout, and the fetch's finished check acknowledges those whose result is there and
        runs again those whose result was lost (docs/guarantees/sentinel.md). Carried states
        then go through the backend's normal path (its own rule: where delivered). Returns the
        tags of the carried states the call did not store."""
        connection = self._own_connection()
        if getattr(connection, "_sock", None) is None or self._fetch_sent_at is not None:
            logger.info("acknowledgements left to the visibility timeout", extra={"tags": tags})
            self._store_again(states)
            return []
        keys = [self.unacked_key, self.unacked_index_key]
        args = [*carried_arguments(states), *tags]
        connection.send_command("EVALSHA", scripts.ACK_SHA, len(keys), *keys, *args)
        try:
            return self.client.parse_response(connection, "EVALSHA")
        except redis.exceptions.NoScriptError:
            connection.send_command("EVAL", scripts.ACK, len(keys), *keys, *args)
            return self.client.parse_response(connection, "EVAL")

    def _resend_acks(self) -> None:
        """A fetch whose script did not run (NOSCRIPT), failed, or whose fate is unknown
        (connection lost): the states it carried are stored again through the backend's
        normal path, then its acknowledgements go again on their own (removing twice is
        harmless), except those whose state is still not stored; if that fails too the
        messages come back after the visibility timeout and the runner skips them as
        finished duplicates (or runs again those whose state was lost)."""
        tags, self._fetch_acks = self._fetch_acks, []
        if self.carried is not None:
            states, self.carried.in_flight = self.carried.in_flight, []
            lost = self._store_again(states)
            tags = [tag for tag in tags if tag not in lost]
        if tags:
            with contextlib.suppress(*self.connection_errors):
                self.send_acks(tags)

    # --- fetch ---

    def _fetch_lists(self) -> list[tuple[str, str]]:
        """(list, queue) in the order kombu's BRPOP would take them: priority, then queue."""
        queues = self._queue_cycle.consume(len(self.active_queues))
        return [(self._q_for_pri(q, pri), q) for pri in self.priority_steps for q in queues]

    def _fetch_keys(self, lists: list[tuple[str, str]]) -> list[str]:
        return [self.unacked_key, self.unacked_index_key, *(key for key, _ in lists)]

    def _fetch_packing(self, lists: list[tuple[str, str]]) -> FetchPacking:
        """The fetch's constant part for these lists (their order: the queues rotate), their
        no-ack flags and the start stamp's settings, packed once (``FetchPacking``)."""
        stamp = self._stamp_argument()
        key = (tuple(lists), self._no_ack_queues, stamp)
        packing = self._packings.get(key)
        if packing is None:
            if len(self._packings) >= MAX_PACKINGS:
                self._packings.clear()
            specs = [("-" if q in self._no_ack_queues else "+") + q for _, q in lists]
            packing = FetchPacking(self._fetch_keys(lists), [*specs, stamp])
            self._packings[key] = packing
        return packing

    def _stamp_argument(self) -> str:
        source = cast(StampSource | None, self.start_stamp)
        stamp = source() if source is not None else None
        return stamp.argument if stamp is not None else ""

    def _fetch_carrying_acks(self) -> None:
        if self._send_fetch(self.pending_acks):
            self.pending_acks = []

    def _send_fetch(self, acks: list[str] | None = None) -> bool:
        lists = self._fetch_lists()
        if not lists:
            return False
        credit = self.qos.can_consume_max_estimate()
        limit = self.fetch_limit if credit is None else max(1, min(self.fetch_limit, credit))
        cycle = self.connection.cycle
        if not cycle._client_registered(self, self.client, FETCH):
            cycle._register(self, self.client, FETCH)
        self._fetch_acks = list(acks or [])
        carried: Sequence[str | bytes | int] = (0,)
        if self.carried is not None and self.carried.pending:
            self.carried.in_flight = self.carried.take_pending()
            carried = carried_arguments(self.carried.in_flight)
        command = self._fetch_packing(lists).command(limit, time(), self._fetch_acks, carried)
        try:
            self.client.connection.send_packed_command([command])
        except BaseException:
            self._resend_acks()
            raise
        self._fetching = lists
        self._fetch_sent_at = monotonic()
        self._maybe_ready = False
        return True

    def _fetch_read(self) -> bool:
        lists = self._fetching or []
        self._fetch_sent_at = self._fetching = None
        connection = self.client.connection
        try:
            reply = self.client.parse_response(connection, "EVALSHA")
        except redis.exceptions.NoScriptError:
            self._resend_acks()
            self.fetch_script.registered_client.script_load(scripts.FETCH)
            self._maybe_ready = True
            raise Empty() from None
        except self.connection_errors:
            connection.disconnect()
            self._resend_acks()
            raise
        except redis.exceptions.InvalidResponse as exc:
            connection.disconnect()
            self._resend_acks()
            raise _unreadable(exc) from exc
        except BaseException:
            self._resend_acks()  # an error reply: what it carried is stored again
            raise
        self._fetch_replied(reply)
        if len(reply) <= FETCHED_FROM:
            raise Empty()
        self._maybe_ready = True  # a full batch may have left more behind
        self._deliver_fetched(lists, reply[FETCHED_FROM:])
        return True

    def _fetch_replied(self, reply: list[Any]) -> None:
        """The fetch in flight ran: its acknowledgements and states are applied, but for the
        states whose delivery was not recorded there (stored again, as the backend does)."""
        self._fetch_acks = []
        if self.carried is not None:
            states, self.carried.in_flight = self.carried.in_flight, []
            self._store_unstored(states, reply[0])

    def _deliver_fetched(self, lists: list[tuple[str, str]], reply: list[Any]) -> None:
        fetched = [
            (*lists[int(reply[i]) - 1], bytes_to_str(reply[i + 1]), reply[i + 2], reply[i + 3])
            for i in range(0, len(reply), FETCHED_FIELDS)
        ]
        tag_header_wanted = self.acks_on_own_connection or self.carried is not None
        for position, (key, queue, tag, raw, check) in enumerate(fetched):
            try:
                payload = self._screened(raw, queue, key, tag)
                if payload is not None:
                    tag_header = tag if tag_header_wanted else ""
                    self.connection._deliver(with_fetch_headers(payload, check, tag_header), queue)
            except BaseException:
                # Not delivered: back at the head of their lists now, not after the timeout.
                self._restore_tags([t for _, _, t, _, _ in fetched[position + 1 :]])
                raise
        self._queue_cycle.rotate(fetched[-1][1])

    def _screened(self, raw: bytes, queue: str, key: str, tag: str) -> Any:
        """The envelope to deliver, or None when the message was taken out of the way. The
        screen sees task messages, i.e. those of consumers that acknowledge (``tag``): a
        no-ack consumer's (``celery inspect``'s control replies) get kombu's decoding only."""
        screen = cast(Screen | None, self.message_screen)
        if screen is not None and tag:
            source = key if key != queue else None
            checked = screen(self.conn_or_acquire, raw, queue, source=source, delivery_tag=tag)
            if checked is None:
                return None
            if checked.body is not None:  # a check that decoded it: for its Message
                self._screened_body = (checked.envelope, checked.body)
            return checked.envelope
        try:
            payload = loads(bytes_to_str(raw))
            properties = payload.get("properties") if isinstance(payload, dict) else None
            if isinstance(properties, dict) and isinstance(properties.get("delivery_tag"), str):
                return payload
        except (ValueError, RecursionError):
            pass
        logger.error("dropped a message that is not kombu's", extra={"queue": queue})
        if tag:
            self.qos._remove_from_indices(tag).execute()
        return None

    def _restore_tags(self, tags: list[str]) -> None:
        for tag in reversed([t for t in tags if t]):  # the oldest ends up next in line
            with contextlib.suppress(*self.connection_errors):
                self.qos.restore_by_tag(tag)  # else left in unacked: the sweep restores it

    # --- wait ---

    def _wait_timeout(self) -> float:
        return float(self.wait_timeout or self.brpop_timeout or 1)

    def _arm_waiters(self) -> None:
        if monotonic() - self._peek_refused_at < headroom.REFUSED_PEEK_PAUSE_SECONDS:
            return
        cycle = self.connection.cycle
        for key, _ in self._fetch_lists():
            waiter = self._waiters.get(key)
            if waiter is None:
                waiter = self._waiters[key] = Waiter(key, self._create_client(asynchronous=True))
                self.handlers[waiter.kind] = partial(self._wait_read, key)
            if waiter.sent_at is not None:
                continue
            if not cycle._client_registered(self, waiter.client, waiter.kind):
                cycle._register(self, waiter.client, waiter.kind)
            timeout = self._wait_timeout()
            waiter.client.connection.send_command("BLMOVE", key, key, "RIGHT", "RIGHT", timeout)
            waiter.sent_at = monotonic()

    def _wait_read(self, key: str) -> None:
        waiter = self._waiters[key]
        waiter.sent_at = None
        connection = waiter.client.connection
        try:
            arrived = waiter.client.parse_response(connection, "BLMOVE") is not None
        except self.connection_errors:
            connection.disconnect()
            raise
        except redis.ResponseError as exc:
            if refusal_code(exc) is None:
                raise
            # A full Redis refuses BLMOVE at once (it may grow memory), empty list or not: fetch
            # instead (FETCH still runs), and peek again only after a pause, so that an idle
            # worker polls about once per event-loop tick instead of spinning.
            self._peek_refused_at = monotonic()
            arrived = True
        if key not in {k for k, _ in self._fetch_lists()}:
            self._drop_waiter(key)  # its queue is no longer consumed
        if arrived:
            self._maybe_ready = True
            if self._fetch_sent_at is None and self.qos.can_consume():
                self._fetch_carrying_acks()
        raise Empty()

    def _drop_waiter(self, key: str) -> None:
        waiter = self._waiters.pop(key)
        self.handlers.pop(waiter.kind, None)
        connection = waiter.client.connection
        if connection is not None:
            connection.disconnect()  # the poller forgets its registration
            waiter.client.connection = None
            waiter.client.connection_pool.release(connection)

    # --- kombu's channel API, atomic ---

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("no_ack", args[0] if args else False):
            self._no_ack_queues = self._no_ack_queues | {queue}
        else:
            self._no_ack_queues = self._no_ack_queues - {queue}
            if self.carry_results and self.carried is None:
                self._start_carrying()
        self._maybe_ready = True
        return super().basic_consume(queue, *args, **kwargs)

    def _start_carrying(self) -> None:
        """A channel that delivers tasks to acknowledge (the worker's task consumer; not a
        producer's, nor pidbox's) carries their final states, from the consuming thread."""
        sentinel = getattr(self, "sentinel", None)
        identity = result_carry.redis_identity(self._connparams(), sentinel)
        self.carried = CarriedStates(identity)
        result_carry.register(self)

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        for payload in self._fetch_now(queue, record=not no_ack):
            message = self.Message(payload, channel=self)
            if not no_ack:
                self.qos.append(message, message.delivery_tag)
            return message
        return None

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        for payload in self._fetch_now(queue, record=True):
            return payload
        raise Empty()

    def _fetch_now(self, queue: str, record: bool) -> list[dict[str, Any]]:
        lists = [(self._q_for_pri(queue, pri), queue) for pri in self.priority_steps]
        keys = self._fetch_keys(lists)
        # No start stamp: a message taken this way is not handed to an idle pool process.
        args = [1, time(), *(("+" if record else "-") + queue for _ in lists), ""]
        with self.conn_or_acquire() as client:
            reply = self.fetch_script(keys=keys, args=args, client=client)
            self._maybe_update_queues_expire(client, queue)
        delivered = []
        for i in range(FETCHED_FROM, len(reply), FETCHED_FIELDS):
            key, tag, raw = lists[int(reply[i]) - 1][0], bytes_to_str(reply[i + 1]), reply[i + 2]
            payload = self._screened(raw, queue, key, tag)
            if payload is not None:
                delivered.append(with_fetch_headers(payload, reply[i + 3]))
        return delivered

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        if not headroom.publishing_past_maxmemory():
            return super()._put(queue, message, **kwargs)  # type: ignore[no-any-return]
        key = self._q_for_pri(queue, self._get_message_priority(message, reverse=False))
        with self.conn_or_acquire() as client:
            self.push_past_maxmemory(keys=[key], args=[dumps(message)], client=client)
        return None

    def _size(self, queue: str) -> int:
        # kombu's LLENs in a MULTI, which a full Redis refuses (even reads, once queued): a
        # worker declaring its queues at start-up then exited. A size needs no atomicity.
        with self.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
            for pri in self.priority_steps:
                pipe.llen(self._q_for_pri(queue, pri))
            return sum(size for size in pipe.execute() if isinstance(size, int))

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        try:
            super()._queue_bind(exchange, routing_key, pattern, queue)
        except redis.ResponseError as exc:
            if not headroom.is_full(exc):
                raise
            with self.conn_or_acquire() as client:
                self._bind_past_maxmemory(client, exchange, routing_key, pattern, queue)

    def _refresh_bindings(self, queues: list[str]) -> None:
        # kombu refreshes the TTL of expiring queues' bindings (the control queue's) in a
        # MULTI, refused while Redis is full: a warning with a traceback every second.
        try:
            super()._refresh_bindings(queues)
        except redis.ResponseError as exc:
            if not headroom.is_full(exc):
                raise
            with self.conn_or_acquire() as client:
                for queue in queues:
                    for exchange, routing_key, args in self.state.queue_bindings(queue):
                        kind = self.typeof(exchange)
                        _, pattern, _ = kind.prepare_bind(queue, exchange, routing_key, args)
                        self._bind_past_maxmemory(client, exchange, routing_key, pattern, queue)

    def _bind_past_maxmemory(
        self, client: Any, exchange: str, routing_key: str, pattern: str, queue: str
    ) -> None:
        """kombu's binding writes (a few bytes, rewritten in place), flagged allow-oom."""
        key = self.keyprefix_queue % (exchange,)
        member = self.sep.join([routing_key or "", pattern or "", queue or ""])
        if queue in self._expires:
            keys = [key, self._script_binding_deadlines]
            args = [member, exchange, self._binding_ttl(queue)]
            self.refresh_binding_past_maxmemory(keys=keys, args=args, client=client)
        else:
            keys = [key, self.keyprefix_binding_permanent % (exchange,)]
            self.bind_past_maxmemory(keys=keys, args=[member], client=client)

    def _do_restore_message(
        self, payload: Any, exchange: str, routing_key: str, pipe: Any, leftmost: bool = False
    ) -> None:
        if isinstance(payload, str):  # fetched unreadable, kept as its text: back as it came
            (pipe.lpush if leftmost else pipe.rpush)(routing_key, payload)
            return
        super()._do_restore_message(payload, exchange, routing_key, pipe, leftmost)

    def _flush_brpop_reauth(self) -> None:
        if self._fetch_sent_at is None:  # never between a fetch and its reply
            super()._flush_brpop_reauth()

    @contextlib.contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        # A channel closed by a reconnect still gets the acknowledgements of the tasks it
        # delivered. kombu then built a pool from a transport without a connection and raised
        # AttributeError, which Celery takes for fatal (the worker hung): it is a connection
        # error, which Celery logs; the message is in its list or in unacked either way.
        if client is None and self._detached():
            raise redis.ConnectionError("the channel is closed: its connection went away")
        with super().conn_or_acquire(client) as acquired:
            yield acquired

    def _detached(self) -> bool:
        transport = self.connection
        return transport is None or getattr(transport, "client", None) is None

    def _connparams(self, asynchronous: bool = False) -> Any:
        if self._detached():
            raise redis.ConnectionError("the channel is closed: its connection went away")
        params = super()._connparams(asynchronous=asynchronous)
        if asynchronous:
            params["max_connections"] = None  # a waiter per list, the fetch and pub/sub
        return params

    def close(self) -> None:
        if self.carried is not None:  # no state is offered to a closing channel
            result_carry.unregister(self)
        if self._fetch_sent_at is not None:
            self._take_back_fetch()
        # A failed call stores its carried states again itself (``send_acks``); its messages
        # come back after the visibility timeout.
        with contextlib.suppress(*self.connection_errors):
            self.flush_acks()
        for key in list(self._waiters):
            with contextlib.suppress(*self.connection_errors):
                self._drop_waiter(key)
        super().close()

    def _take_back_fetch(self) -> None:
        """A fetch in flight at close: read what it took and put it back at once."""
        self._fetch_sent_at = self._fetching = None
        connection = self.client.connection
        try:
            reply = self.client.parse_response(connection, "EVALSHA")
        except (*self.connection_errors, redis.ResponseError, redis.exceptions.InvalidResponse):
            connection.disconnect()  # a reply it did not read must not be read as the next one
            self._resend_acks()
            return  # whatever it took is in unacked: the sweep restores it
        self._fetch_replied(reply)
        replied = range(FETCHED_FROM, len(reply), FETCHED_FIELDS)
        self._restore_tags([bytes_to_str(reply[i + 1]) for i in replied])
