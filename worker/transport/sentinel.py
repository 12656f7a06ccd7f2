"""Courier's transport with the primary found through Redis Sentinel.

kombu's own ``SentinelChannel`` gives kombu's channel a ``SentinelConnectionPool``; this gives
Courier's channel (atomic fetch, blocking peeks, acknowledgements carried by the fetch, the
dead-letter screen, the writes a full Redis must take: ``channel.py``) the same, and changes
nothing else: how a connection to the primary is obtained is all that differs.

Selected by ``celery_config`` when ``COURIER_REDIS_SENTINELS`` is set, with the broker URL left
as ``COURIER_REDIS_URL`` (database, password, TLS options) and the transport option ``sentinel``
(``redis_client.sentinel_options``: the Sentinels, the master name, their own password). Why not
kombu's ``sentinel://host1;sentinel://host2`` URL: kombu takes the ``;``-separated hosts for
failover alternates, and on a failed connection attempt switches to the next one by its URL,
whose scheme then picks kombu's stock ``sentinel`` transport over Courier's: a worker would
quietly lose the atomic fetch at its first failover.

What a failover does to a consumer: the primary's death, or its demotion (Sentinel kills its
clients; a command still reaching it is answered ``READONLY``, a blocked one ``UNBLOCKED``),
reaches the channel as a connection error (redis-py's ``SentinelManagedConnection`` turns both
replies into one, and Courier's ``FencedConnection`` a ``NOREPLICAS`` too: an old primary whose
replicas left for the new one), exactly like a restart of a standalone Redis: Celery's
consumer reconnects, and the new channel's connections ask the Sentinels where the primary is.
"""

from __future__ import annotations

from typing import Any

from worker.core.redis_client import FencedConnection, FencedSSLConnection, sentinel_pool
from worker.transport.channel import Channel
from worker.transport.poller import Transport


class SentinelChannel(Channel):
    from_transport_options = (*Channel.from_transport_options, "sentinel")
    #: ``redis_client.sentinel_options(settings)``: sentinels, master_name, sentinel_kwargs.
    sentinel: dict[str, Any] | None = None
    connection_class = FencedConnection
    connection_class_ssl = FencedSSLConnection
    acks_on_own_connection = True

    def _get_pool(self, asynchronous: bool = False) -> Any:
        if not self.sentinel:
            raise ValueError("Courier's Sentinel transport needs the 'sentinel' option")
        params = self._connparams(asynchronous=asynchronous)
        channel: Any = self  # kombu's attributes are untyped
        channel.keyprefix_fanout = channel.keyprefix_fanout.format(db=params["db"])
        # The event loop's pool closes its connections only from the event loop's thread.
        pool = sentinel_pool(self.sentinel, params, watch=not asynchronous)
        # As kombu's SentinelChannel: closed with the channel's pools (_disconnect_pools).
        if asynchronous:
            self._async_sentinel_manager = pool.sentinel_manager
        else:
            self._sentinel_manager = pool.sentinel_manager
        return pool


class SentinelTransport(Transport):
    Channel = SentinelChannel
