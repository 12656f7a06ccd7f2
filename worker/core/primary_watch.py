"""Every process moves its idle Redis connections to a new primary within half a second.

Why: redis-py's Sentinel pool asks the Sentinels where the primary is only when it opens a
connection. A connection idle in a pool through a failover still points at the old primary,
and is used again as soon as a task needs one. After a kill that fails at once; but a primary
that was frozen (or cut off) and comes back is a *stale* primary for up to ~10 s, until
Sentinel converts it, and while its last replica still follows it, it takes writes that its
resync then discards. Seen in ``make chaos``: a pool child stored a task's result through such
a connection while the task's message, fetched from the new primary, was acknowledged there:
its status read ``started`` for good (3 of 361 tasks in one run of a frozen primary).

So each process that made a synchronous Sentinel pool (``redis_client.sentinel_pool``) runs one
daemon thread that asks the Sentinels every ``INTERVAL_SECONDS`` and, when they name another
primary, drops every pool's idle connections to the old one (what redis-py's pool does itself
when it next opens a connection). One ``SENTINEL MASTERS`` per interval per set of Sentinels,
however many pools; restarted in a forked child (Celery's prefork pool), whose inherited pools
need it as much. The API's asyncio pool is followed by its failover audit the same way
(``app/failover_audit.py``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Hashable
from typing import Any

import redis

logger = logging.getLogger(__name__)

INTERVAL_SECONDS = 0.5


def follow(pool: Any, address: tuple[str, int]) -> bool:
    """Point ``pool`` (a sync ``SentinelConnectionPool``) at ``address``; True when it moved."""
    proxy = pool.proxy
    current = proxy.master_address
    if current is None or (str(current[0]), int(current[1])) == address:
        return False  # never connected yet (it will ask), or already there
    proxy.master_address = address
    pool.disconnect(inuse_connections=False)
    return True


class PrimaryWatch:
    def __init__(self, interval: float = INTERVAL_SECONDS) -> None:
        self.interval = interval
        self._pools: dict[Hashable, weakref.WeakSet[Any]] = {}
        self._lock = threading.Lock()
        self._pid: int | None = None

    def add(self, key: Hashable, pool: Any) -> None:
        """Watch ``pool``; pools with the same ``key`` (Sentinels and master name) share one
        question to the Sentinels."""
        with self._lock:
            self._pools.setdefault(key, weakref.WeakSet()).add(pool)
            self._start()

    def after_fork(self) -> None:
        self._lock = threading.Lock()  # another thread may have held it at the fork
        with self._lock:
            self._pid = None
            if any(self._pools.values()):
                self._start()

    def _start(self) -> None:
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        threading.Thread(target=self._run, daemon=True, name="courier-primary-watch").start()

    def _run(self) -> None:
        pid = os.getpid()
        while self._pid == pid:
            time.sleep(self.interval)
            try:
                self.check()
            except Exception:  # never let the thread die: the next interval tries again
                logger.exception("primary watch failed")

    def check(self) -> None:
        """Ask once per set of Sentinels, and move every pool of that set that lags."""
        with self._lock:
            groups = [list(pools) for pools in self._pools.values()]
        for pools in groups:
            if not pools:
                continue
            first = pools[0]
            try:
                host, port = first.sentinel_manager.discover_master(first.service_name)
            except (redis.ConnectionError, redis.TimeoutError):
                continue  # no primary named now (a failover in progress): next time
            moved = sum(follow(pool, (str(host), int(port))) for pool in pools)
            if moved:
                logger.info(
                    "idle connections moved to the new primary",
                    extra={"primary": f"{host}:{port}", "pools": moved},
                )


WATCH = PrimaryWatch()
os.register_at_fork(after_in_child=WATCH.after_fork)
