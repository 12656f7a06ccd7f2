"""Submits refused above Redis's memory high watermark, so workers keep room to drain the queue.

Reading ``INFO memory`` on every submit would add a round trip to the hottest path. Each API
process keeps the last reading instead, refreshed by an asyncio task of its own on the event
loop (started by the lifespan, so after gunicorn forks; no reading yet refuses nothing): every
second while Redis is well below the watermark, every 50 ms once it is within ``NEAR`` of it or
filling fast enough to get there before the next slow reading (a burst from a fast client filled
a small Redis from 79 % to maxmemory within one second: its OOM refused before the watermark),
so a burst of submits cannot run far past it between two readings. A reading older than
``MAX_AGE_SECONDS`` (Redis not answering) refuses nothing: the submit's own write then fails,
or not, on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import redis
from redis.asyncio import Redis as AsyncRedis

from worker.core.redis_client import RedisMemory

logger = logging.getLogger("courier.api")

SLOW_SECONDS = 1.0
FAST_SECONDS = 0.05
NEAR = 0.1  # of maxmemory, below the watermark: poll fast from here on
AHEAD_SECONDS = 2 * SLOW_SECONDS  # ... or from when Redis would get there this soon
MAX_AGE_SECONDS = 3.0
# How long ``close`` waits for a poll under way (bounded by Redis's socket timeout) to end.
CLOSE_SECONDS = 5.0


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


async def read_memory(client: AsyncRedis) -> RedisMemory:
    return RedisMemory.from_info(await client.info("memory"))


class MemoryWatermark:
    def __init__(self, client: AsyncRedis, watermark: float) -> None:
        self._redis = client
        self.watermark = watermark
        self._reading: tuple[float, RedisMemory] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def check(self) -> None:
        """Raise ``RedisFull`` when the last reading, if recent, is above the watermark."""
        reading = self._reading
        if reading is None:
            return
        read_at, memory = reading
        if memory.fraction >= self.watermark and time.monotonic() - read_at < MAX_AGE_SECONDS:
            check_watermark(memory, self.watermark)

    def start(self) -> None:
        """Poll from the running event loop (the lifespan's, after gunicorn forked) until
        ``close``."""
        if self._poller is None:
            self._stop = asyncio.Event()  # this loop's: a lifespan may run again on another
            self._poller = asyncio.get_running_loop().create_task(
                self._poll(), name="redis-memory-watermark"
            )

    async def _poll(self) -> None:
        while not self._stop.is_set():
            interval = SLOW_SECONDS
            try:
                memory = await read_memory(self._redis)
            except redis.RedisError as exc:  # away or refusing: the last reading ages out
                logger.debug("redis memory unreadable", extra={"error": str(exc)})
            else:
                reading = (time.monotonic(), memory)
                interval = next_interval(self._reading, reading, self.watermark)
                self._reading = reading
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval)

    async def close(self) -> None:
        """Stop polling: a poll under way ends first (a command cancelled half-way could leave
        its connection to the pool's clean-up), for at most ``CLOSE_SECONDS``."""
        self._stop.set()
        poller, self._poller = self._poller, None
        if poller is not None:
            _, pending = await asyncio.wait({poller}, timeout=CLOSE_SECONDS)
            for stuck in pending:
                stuck.cancel()


def next_interval(
    previous: tuple[float, RedisMemory] | None, reading: tuple[float, RedisMemory], watermark: float
) -> float:
    """Seconds to the next reading: fast once Redis is within ``NEAR`` of the watermark, or
    would be within ``AHEAD_SECONDS`` at the pace it filled since the previous reading (two slow
    readings: a burst that began between the last two shows only part of its pace)."""
    at, memory = reading
    if not memory.maxmemory:
        return SLOW_SECONDS
    fraction = memory.fraction
    if previous is not None and at > previous[0]:
        pace = (fraction - previous[1].fraction) / (at - previous[0])
        fraction += max(0.0, pace) * AHEAD_SECONDS
    return FAST_SECONDS if fraction >= watermark - NEAR else SLOW_SECONDS
