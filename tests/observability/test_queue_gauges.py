"""The queue gauges outlive the workers: worker and API pods share one lease, so exactly one of
them exports the backlog; the API only while no worker is alive (it takes over when every
worker is gone, and hands back when one returns)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from tests.conftest import settings_from
from tests.utils.processes import (
    RedisServer,
    celery_worker,
    courier_env,
    free_port,
    http_ok,
    wait_until,
)
from tests.utils.prom import scrape


def backlog_series(text: str) -> int:
    families = text_string_to_metric_families(text)
    return sum(len(f.samples) for f in families if f.name == "courier_queue_backlog")


def test_one_exporter_at_a_time_and_the_api_takes_over_from_dead_workers(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    port = free_port()
    env = {
        "COURIER_REDIS_URL": own_redis.url,
        "COURIER_QUEUE_METRICS_LEASE_SECONDS": "2",
        "COURIER_WORKER_METRICS_PORT": str(port),
        "COURIER_WORKER_HEARTBEAT_SECONDS": "0.5",  # a dead worker leaves the registry in 1.5 s
    }
    worker_url = f"http://127.0.0.1:{port}"
    with contextlib.ExitStack() as processes:
        worker = processes.enter_context(
            celery_worker(courier_env(env), tmp_path / "worker.log", "lease", concurrency=1)
        )
        api = processes.enter_context(TestClient(create_app(settings_from(env))))
        assert backlog_series(api.get("/metrics").text) == 1  # no worker alive yet: the API
        wait_until(lambda: http_ok(f"{worker_url}/readyz"), 90, "the worker")
        # A worker is alive: the API gives the lease up at its next scrape.
        wait_until(
            lambda: (
                backlog_series(api.get("/metrics").text) == 0
                and any(n == "courier_queue_backlog" for n, _ in scrape(f"{worker_url}/metrics"))
            ),
            10,
            "the worker to take the lease from the API",
        )
        assert backlog_series(api.get("/metrics").text) == 0  # the worker exports: not twice
        worker.kill()  # every worker gone at once (no clean shutdown)
        wait_until(
            lambda: backlog_series(api.get("/metrics").text) == 1,
            15,
            "the API to export the backlog once the worker's lease lapsed",
        )
