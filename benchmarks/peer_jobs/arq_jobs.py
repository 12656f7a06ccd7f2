"""arq: ``arq benchmarks.peer_jobs.arq_jobs.WorkerSettings`` (one asyncio process, defaults)."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from arq import create_pool
from arq.connections import RedisSettings

from benchmarks.peer_jobs.common import DONE_KEY, REDIS_URL, main


async def noop(ctx: dict[str, Any], echo: object = None, sleep_seconds: float = 0.0) -> None:
    await ctx["redis"].incr(DONE_KEY)


class WorkerSettings:
    functions: ClassVar[list[Any]] = [noop]
    redis_settings = RedisSettings.from_dsn(REDIS_URL)
    # arq's defaults (max_jobs=10): with max_jobs=2 it reads two jobs per 0.5 s poll (~4 jobs/s
    # measured), which would compare nothing useful.


async def _enqueue(count: int) -> None:
    pool = await create_pool(RedisSettings.from_dsn(REDIS_URL))
    for start in range(0, count, 500):
        await asyncio.gather(
            *(pool.enqueue_job("noop", echo=i) for i in range(start, min(count, start + 500)))
        )
    await pool.aclose()


def enqueue(count: int) -> None:
    asyncio.run(_enqueue(count))


if __name__ == "__main__":
    main(enqueue)
