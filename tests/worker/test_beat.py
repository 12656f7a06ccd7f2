"""celery beat fires the periodic reconcile, which the session worker executes."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from tests.utils.processes import Service, celery_beat, courier_env, wait_until
from worker.core.names import RECONCILE_LAST_RUN_KEY, RECONCILE_TASK


def test_beat_runs_the_reconcile_on_its_schedule(
    courier_vars: dict[str, str], worker: Service, redis_client: redis.Redis, tmp_path: Path
) -> None:
    before = time.time()
    env = courier_env(
        {
            **courier_vars,
            "COURIER_RECONCILE_INTERVAL_SECONDS": "1",
            "COURIER_BEAT_SCHEDULE_FILE": str(tmp_path / "schedule"),
        }
    )
    beat = celery_beat(env, tmp_path / "beat.log")
    try:
        wait_until(
            lambda: float(redis_client.get(RECONCILE_LAST_RUN_KEY) or 0) > before,
            30,
            "the reconcile task to run",
        )
    finally:
        beat.stop()
    assert RECONCILE_TASK in beat.output()
