"""rq: ``rq worker -u URL default`` (its default forking worker), two of them."""

from __future__ import annotations

import redis
from rq import Queue

from benchmarks.peer_jobs.common import DONE_KEY, REDIS_URL, main

# By path: run with ``python -m``, the function object would be named ``__main__.noop``.
NOOP_PATH = "benchmarks.peer_jobs.rq_jobs.noop"


def noop(echo: object = None, sleep_seconds: float = 0.0) -> None:
    redis.Redis.from_url(REDIS_URL).incr(DONE_KEY)


def enqueue(count: int) -> None:
    queue = Queue("default", connection=redis.Redis.from_url(REDIS_URL))
    batch = 500
    for start in range(0, count, batch):
        jobs = [
            Queue.prepare_data(NOOP_PATH, kwargs={"echo": i, "sleep_seconds": 0.0})
            for i in range(start, min(count, start + batch))
        ]
        queue.enqueue_many(jobs)


if __name__ == "__main__":
    main(enqueue)
