"""Celery out of the box, with a no-op task: the baseline for execution and round trips.

Defaults except what the comparison must share with Courier: JSON (already Celery's default)
and a Redis result backend, so results are stored as Courier stores them.
``BENCH_IGNORE_RESULT=1`` prices result storage (``ignore_result=True``);
``BENCH_TRACK_STARTED=1`` adds ``task_track_started=True``: with ``--loglevel=info`` that is the
seed's Celery app as the seed ran it, the baseline of the issue's 2x drain target.
"""

from __future__ import annotations

import os

from celery import Celery


def make_app(redis_url: str, ignore_result: bool = False, track_started: bool = False) -> Celery:
    bare = Celery("bare", broker=redis_url, backend=redis_url)
    bare.conf.task_ignore_result = ignore_result
    bare.conf.task_track_started = track_started

    @bare.task(name="noop")
    def noop(echo: object = None, sleep_seconds: float = 0.0) -> object:
        return echo

    return bare


app = make_app(
    os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
    ignore_result=bool(os.environ.get("BENCH_IGNORE_RESULT")),
    track_started=bool(os.environ.get("BENCH_TRACK_STARTED")),
)
