"""A stack of one's own for worker tests: redis-server, a Celery worker with a known metrics
port, and the API in-process. Every process is stopped, whichever step fails."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import redis
from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import settings_from
from tests.utils.processes import (
    RedisServer,
    Service,
    celery_worker,
    courier_env,
    free_port,
    http_ok,
    wait_until,
)
from tests.utils.prom import scrape

# An error line or a traceback in a worker's JSON log.
LOGGED_ERROR = re.compile(r'"level": "(ERROR|CRITICAL)"|Traceback')


@dataclass
class WorkerStack:
    api: TestClient
    redis: redis.Redis
    worker: Service
    metrics_url: str
    redis_url: str = ""
    pool: str = "prefork"

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        return scrape(self.metrics_url)

    def logged_errors(self) -> list[str]:
        return [line for line in self.worker.output().splitlines() if LOGGED_ERROR.search(line)]


@contextlib.contextmanager
def worker_stack(
    tmp: Path,
    name: str,
    env: Mapping[str, str] | None = None,
    concurrency: int = 1,
    extra_args: tuple[str, ...] = (),
    redis_args: tuple[str, ...] = (),
    pool: str = "prefork",
) -> Iterator[WorkerStack]:
    with contextlib.ExitStack() as cleanup:
        server = RedisServer(tmp / "redis", extra_args=redis_args)
        cleanup.callback(server.stop)
        server.start()
        port = free_port()
        variables = {
            "COURIER_REDIS_URL": server.url,
            "COURIER_WORKER_METRICS_PORT": str(port),
            "COURIER_RETRY_BACKOFF_SECONDS": "0.05",
            **(env or {}),
        }
        worker = celery_worker(
            courier_env(variables), tmp / "worker.log", name, concurrency, extra_args, pool=pool
        )
        cleanup.callback(worker.stop)
        client = redis.Redis.from_url(server.url)
        cleanup.callback(client.close)
        api = cleanup.enter_context(TestClient(create_app(settings_from(variables))))
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_ok(f"{url}/readyz"), 60, f"the {name} worker's /readyz")
        yield WorkerStack(api, client, worker, f"{url}/metrics", server.url, pool)
