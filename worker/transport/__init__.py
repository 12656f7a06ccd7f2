"""Courier's broker transport: kombu's Redis transport, fetching so that no message is lost.

Selected with Celery's ``broker_transport = "worker.transport:Transport"`` (``celery_config``);
kombu, Celery, Flower, ``celery inspect`` and ``celery purge`` see a Redis transport as before:
same lists (``<queue>`` and its priority sub-lists ``<queue>\\x06\\x16<n>``), same ``unacked``
hash and ``unacked_index`` sorted set, same restore sweep, same publishing.

Why: kombu consumes with ``BRPOP`` and records the message in ``unacked`` afterwards, in a
second command. Between the two the message is in no list and in no hash; whatever happens there
loses it: Redis answering the BRPOP into a link that is dead (a partition: the worker drops the
connection before the reply arrives), Redis dying between the two commands, the worker dying.

What it does instead (``channel.py``):
- *Atomic fetch.* A message leaves its list only inside the ``FETCH`` Lua script
  (``scripts.py``), which records it in ``unacked`` and ``unacked_index`` in kombu's format in
  the same step. It takes up to the QoS credit (``worker_prefetch_multiplier`` x concurrency, what
  Celery lets the channel hold) in one round trip, in priority order. Whatever happens to the
  reply, the message is either still in its list or in ``unacked``, from where kombu's sweep
  restores it after the visibility timeout: at worst it is redelivered, never lost.
- *Blocking peek.* To wait without polling, each list gets a connection blocked in
  ``BLMOVE list list RIGHT RIGHT timeout``: Redis answers as soon as the list has an element, and
  moving the tail onto the same list leaves it as it was. The reply only wakes the channel, which
  then fetches. ``BLMOVE`` waits on one key, hence one connection per list: with the four
  priority steps, four per consumed queue (plus the fetch's and pub/sub's). A peek answered into
  a dead link took nothing.
- While fetches return messages, the channel fetches again as soon as it has credit, without
  waiting: the peeks are only armed once a fetch came back empty.
- Acknowledgement is one ``ACK`` script call (ZREM + HDEL) instead of a four-command MULTI/EXEC.
- *Final states carried* (``carry.py``, the transport option ``carry_results``, set for the inline
  pool): a task's SUCCESS or FAILURE, handed over by the result backend
  (``worker/core/result_carry.py``), is written by the ``FETCH`` or ``ACK`` call that carries the
  task's acknowledgement, before it; stored again through the backend when that call fails.
- *Start stamp at fetch* (``stamp.py``, the transport option ``start_stamp``): for a task handed
  to an idle pool process at once, ``FETCH`` also does the worker's start stamp (record, start
  time, STARTED) and returns its check, which the channel puts in the ``courier_start_check``
  header (removed from every message otherwise); the pool child then skips its round trip.
- Every fetched message goes through ``message_screen`` (Courier's dead-letter screen) before
  kombu decodes it; a message with no usable delivery tag is recorded under one of its own. The
  body the screen decoded to check it is handed to kombu's ``Message`` (``channel.Message``),
  which does not decode it again.
- ``FETCH`` is sent as bytes whose constant part (keys, list specs, the start stamp's settings)
  was packed once per order of the lists (``channel.FetchPacking``), not by redis-py per fetch.
- A channel closed under a task (a reconnect) raises a connection error, not AttributeError, when
  the task's acknowledgement reaches it: Celery logs it, the message returns after the
  visibility timeout and the runner skips it as finished.

Trade-offs:
- Idle latency: a message costs one more round trip than BRPOP (the peek's reply, then the
  fetch), about 0.1 ms on one host.
- Thundering herd at idle: a peek leaves the message in place, so Redis answers *every* worker
  peeking at that list, and each sends a fetch; one gets the message, the others an empty reply.
  So an idle fleet of W workers spends about 2W small commands per message; under load nobody
  peeks (fetches return messages) and the cost is gone. Fine for tens of workers per Redis; a
  fleet of hundreds of idle workers per queue would want a per-consumer list instead.
- Connections: one per list per worker process that consumes (queues x 4 + 2), and an idle
  worker sends one BLMOVE per list per ``wait_timeout`` (the transport's ``brpop_timeout``, 1 s).
- Dead links are found by the replies' deadlines (a peek answers within its timeout, a fetch at
  once: overdue by ``health_check_interval`` means the link is dead) and by TCP keepalive.
- Redis Cluster and ``global_keyprefix`` are not supported (the scripts name all their keys).
- Sentinel: ``SentinelTransport`` (``sentinel.py``) is this transport with its connections
  taken from a Sentinel-managed pool of the current primary; nothing else differs.
"""

from __future__ import annotations

from worker.transport.channel import Channel, QoS
from worker.transport.poller import Poller, Transport
from worker.transport.sentinel import SentinelChannel, SentinelTransport

__all__ = ["Channel", "Poller", "QoS", "SentinelChannel", "SentinelTransport", "Transport"]
