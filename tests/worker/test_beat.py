"""celery beat fires the periodic cleanup, which the session worker executes."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from tests.utils.processes import Service, celery_beat, courier_env, wait_until
from worker.core.names import ARTIFACT_INDEX_KEY, CLEANUP_LAST_RUN_KEY


def test_beat_runs_the_artifact_cleanup_on_its_schedule(
    courier_vars: dict[str, str], worker: Service, redis_client: redis.Redis, tmp_path: Path
) -> None:
    redis_client.zadd(ARTIFACT_INDEX_KEY, {"expired-artifact": time.time() - 10})
    before = time.time()
    env = courier_env(
        {
            **courier_vars,
            "COURIER_CLEANUP_INTERVAL_SECONDS": "1",
            "COURIER_BEAT_SCHEDULE_FILE": str(tmp_path / "schedule"),
        }
    )
    beat = celery_beat(env, tmp_path / "beat.log")
    try:
        wait_until(
            lambda: float(redis_client.get(CLEANUP_LAST_RUN_KEY) or 0) > before,
            30,
            "the cleanup task to run",
        )
        assert redis_client.zscore(ARTIFACT_INDEX_KEY, "expired-artifact") is None
    finally:
        beat.stop()
    assert "cleanup_artifacts" in beat.output()
