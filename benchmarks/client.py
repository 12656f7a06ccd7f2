"""Submitting many tasks over HTTP from Python, bounded in count and time.

For throughput the suite uses wrk; this client is for scenarios that need a known number of
real API submissions (memory, Redis footprint) or a steady trickle (the soak).
"""

from __future__ import annotations

import asyncio
import time

import httpx

BODY = {"echo": {"n": 1}, "sleep_seconds": 0}


async def _submit_many(url: str, count: int, concurrency: int) -> None:
    remaining = iter(range(count))
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:

        async def lane() -> None:
            for _ in remaining:
                response = await client.post("/v1/tasks/noop", json=BODY)
                response.raise_for_status()

        await asyncio.gather(*(lane() for _ in range(concurrency)))


def submit_many(url: str, count: int, concurrency: int = 16) -> None:
    """POST ``count`` no-ops with ``concurrency`` requests in flight."""
    asyncio.run(_submit_many(url, count, concurrency))


async def _submit_steady(url: str, per_second: int, seconds: float) -> int:
    sent = 0
    end = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        while (tick := time.monotonic()) < end:
            batch = [client.post("/v1/tasks/noop", json=BODY) for _ in range(per_second // 10)]
            for response in await asyncio.gather(*batch):
                response.raise_for_status()
            sent += len(batch)
            await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
    return sent


def submit_steady(url: str, per_second: int, seconds: float) -> int:
    """About ``per_second`` POSTs a second (in tenth-second batches) for ``seconds``."""
    return asyncio.run(_submit_steady(url, per_second, seconds))
