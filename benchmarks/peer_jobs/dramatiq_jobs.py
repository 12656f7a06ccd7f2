"""dramatiq: ``dramatiq benchmarks.peer_jobs.dramatiq_jobs --processes 2 --threads 1``."""

from __future__ import annotations

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from benchmarks.peer_jobs.common import DONE_KEY, REDIS_URL, main

dramatiq.set_broker(RedisBroker(url=REDIS_URL))
_counter = redis.Redis.from_url(REDIS_URL)


@dramatiq.actor(queue_name="default", max_retries=0)
def noop(echo: object = None, sleep_seconds: float = 0.0) -> None:
    _counter.incr(DONE_KEY)


def enqueue(count: int) -> None:
    for i in range(count):
        noop.send(i, 0.0)


if __name__ == "__main__":
    main(enqueue)
