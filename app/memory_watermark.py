"""Submits refused above Redis's memory high watermark, so workers keep room to drain the queue.

Reading ``INFO memory`` on every submit would add a round trip to the hottest path. Each API
process keeps the last reading instead, refreshed by a daemon thread of its own (started on
first use, so after gunicorn forks): every second while Redis is well below the watermark,
every 50 ms once it is within ``NEAR`` of it, so a burst of submits cannot run far past it
between two readings. A reading older than ``MAX_AGE_SECONDS`` (Redis not answering) refuses
nothing: the submit's own write then fails, or not, on its own.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from worker.core.redis_client import RedisMemory, read_memory

logger = logging.getLogger("courier.api")

SLOW_SECONDS = 1.0
FAST_SECONDS = 0.05
NEAR = 0.1  # of maxmemory, below the watermark: poll fast from here on
MAX_AGE_SECONDS = 3.0


class RedisFull(Exception):
    """Redis holds more than the high watermark of its maxmemory: the submit was not stored."""

    def __init__(self, memory: RedisMemory, watermark: float) -> None:
        super().__init__(
            f"Redis is full: {memory.describe()}; submits are refused above {watermark:.0%} "
            "of maxmemory until workers drain the queue (COURIER_REDIS_MEMORY_HIGH_WATERMARK)"
        )
        self.memory = memory
        self.watermark = watermark


def check_watermark(memory: RedisMemory, watermark: float) -> None:
    if memory.maxmemory and memory.fraction >= watermark:
        raise RedisFull(memory, watermark)


class MemoryWatermark:
    def __init__(self, client: redis.Redis, watermark: float) -> None:
        self._redis = client
        self.watermark = watermark
        self._reading: tuple[float, RedisMemory] | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def check(self) -> None:
        """Raise ``RedisFull`` when the last reading, if recent, is above the watermark."""
        reading = self._reading
        if reading is None:
            self._start()
            return
        read_at, memory = reading
        if memory.fraction >= self.watermark and time.monotonic() - read_at < MAX_AGE_SECONDS:
            check_watermark(memory, self.watermark)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._poll, daemon=True, name="redis-memory-watermark"
                )
                self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            interval = SLOW_SECONDS
            try:
                memory = read_memory(self._redis)
            except redis.RedisError as exc:  # away or refusing: the last reading ages out
                logger.debug("redis memory unreadable", extra={"error": str(exc)})
            else:
                self._reading = (time.monotonic(), memory)
                if memory.maxmemory and memory.fraction >= self.watermark - NEAR:
                    interval = FAST_SECONDS
            self._stop.wait(interval)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5)
