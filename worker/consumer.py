"""Celery's consumer, reconnecting to the broker every second instead of backing off to 30 s.

Why: Celery's consumer reconnects through kombu's ``ensure_connection`` at kombu's default pace,
2 s, then 4, 6... up to 30 s between attempts. After a Redis failover the first attempts fail
(no primary named yet, or the old one refusing writes), so a worker sat idle for seconds after
the new primary was ready: measured with ``down-after-milliseconds`` 1000, tasks ran again 6 s
after the primary was killed, the second attempt landing 4 s after the switch; with the
chart's 5000 the pace reaches its 30 s steps. Here an attempt follows at once, then every half
second, then every second: one connection to a Sentinel or Redis per second per worker while
Redis is away, the same for a standalone Redis that restarts.

Selected by Celery's own ``worker_consumer`` setting (``celery_config``).
"""

from __future__ import annotations

from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer

# kombu's retry_over_time: the first retry after interval_start, each next one interval_step
# later, never more than interval_max apart.
RECONNECT_PACE: dict[str, float] = {"interval_start": 0, "interval_step": 0.5, "interval_max": 1.0}


class Consumer(CeleryConsumer):
    def ensure_connected(self, conn: Any) -> Any:
        ensure = conn.ensure_connection

        def paced(*args: Any, **kwargs: Any) -> Any:
            return ensure(*args, **{**RECONNECT_PACE, **kwargs})

        conn.ensure_connection = paced
        return super().ensure_connected(conn)
