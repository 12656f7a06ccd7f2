"""The poller and the transport: kombu's Redis event-loop plumbing, driving Courier's channel.

kombu's ``MultiChannelPoller`` already multiplexes a channel's connections on one event loop
(Celery's hub, or ``drain_events``). Courier's channel registers more of them (the fetch and one
blocking peek per list, each under its own type), so the poller asks the channel to fetch or
wait instead of sending a BRPOP, hands every reply of those types to the channel whatever the
credit (a peek's reply carries no message: it must be read, never paused), and checks each of
them for an overdue reply as kombu checks its BRPOP. Acknowledgements made since the last poll
start leave at the next one, all in one script call (``Channel.flush_acks``).
"""

from __future__ import annotations

import logging
from time import monotonic
from typing import Any

from kombu.transport import redis as kombu_redis

from worker.transport.channel import Channel

logger = logging.getLogger(__name__)

# As in channel.py: kombu's stubs cover its public API only.
_KombuPoller: Any = kombu_redis.MultiChannelPoller
_KombuTransport: Any = kombu_redis.Transport


class Poller(_KombuPoller):  # type: ignore[misc]
    def on_poll_start(self) -> None:
        for channel in self._channels:
            if channel.active_queues and channel.qos.can_consume():
                channel.consume()  # a fetch it sends carries the pending acknowledgements
            try:
                channel.flush_acks()
            except channel.connection_errors as exc:
                # Those messages stay in unacked: back after the visibility timeout, skipped
                # by the runner as finished duplicates. The connection's own failure is
                # handled where it is used next.
                logger.warning("acknowledgements not sent", extra={"error": str(exc)})
            if channel.active_fanout_queues:
                self._register_LISTEN(channel)

    def on_readable(self, fileno: int) -> Any:
        chan_type = self._fd_to_chan.get(fileno)
        if chan_type is None or chan_type[1] == "LISTEN":
            return super().on_readable(fileno)
        channel, kind = chan_type
        return channel.handlers[kind]()

    def maybe_check_brpop_health(self) -> None:
        now = monotonic()
        for channel in self._channels:
            channel.drop_overdue_connections(now)

    def _on_connection_disconnect(self, connection: Any) -> None:
        # Without an event loop (drain_events): forget the registrations of that connection,
        # as the event loop's own handler does (kombu only unregisters its socket).
        super()._on_connection_disconnect(connection)
        gone = [key for key in self._chan_to_sock if key[1].connection is connection]
        for channel, client, kind in gone:
            del self._chan_to_sock[(channel, client, kind)]
            for fd in [fd for fd, owner in self._fd_to_chan.items() if owner == (channel, kind)]:
                del self._fd_to_chan[fd]


class Transport(_KombuTransport):  # type: ignore[misc]
    Channel = Channel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cycle = Poller()
