"""The worker's own HTTP port: ``/metrics`` (all pool children summed), ``/healthz``, ``/readyz``.

It runs in the worker's main process. ``/healthz`` answers from memory, so a liveness probe
never touches the broker (a Redis outage must not restart every worker). ``/readyz`` asks Redis
for a PING each time, so it turns 503 within about a socket timeout of Redis freezing or of a
partition, and 200 again once Redis answers and the consumer is connected again (after a
failover, Redis answers seconds before Celery's next reconnection attempt). The cluster-wide
queue gauges are exported by one worker at a time, the holder of a short Redis lease, so
``sum()`` (celery-exporter's dashboards) and ``max()`` (Courier's autoscaling) both read one
series per queue however many workers are scraped.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import redis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from worker.core.metrics import queue_families
from worker.core.multiproc import multiprocess_enabled
from worker.core.names import QUEUE_METRICS_LEASE_KEY
from worker.core.queue_stats import QueueInspector
from worker.core.redis_client import create_redis
from worker.core.settings import Settings

logger = logging.getLogger(__name__)


class QueueCollector(Collector):
    """The queue gauges, while ``holder`` has the lease; ``defer_to_workers``: only while no
    worker is alive (an API pod standing in for the workers)."""

    def __init__(
        self,
        inspector: QueueInspector,
        holder: str,
        lease_seconds: float,
        defer_to_workers: bool = False,
    ) -> None:
        self._inspector = inspector
        self._holder = holder
        self._lease_seconds = lease_seconds
        self._hold = (
            inspector.hold_lease_unless_workers if defer_to_workers else inspector.hold_lease
        )

    def describe(self) -> list[Metric]:
        return []  # nothing to collect at registration time

    def collect(self) -> Iterator[Metric]:
        try:
            if not self._hold(QUEUE_METRICS_LEASE_KEY, self._holder, self._lease_seconds):
                return
            stats = self._inspector.stats()
            workers = self._inspector.workers_per_queue()
        except redis.RedisError as exc:  # away, or refusing the lease (a full Redis)
            logger.warning("queue metrics unavailable", extra={"error": str(exc)})
            return
        yield from queue_families(stats, workers)


class RedisProbe:
    """Does Redis answer a PING within the client's socket timeout? None if so, else why not."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def __call__(self) -> str | None:
        try:
            self._redis.ping()
        except redis.RedisError as exc:
            return f"Redis: {type(exc).__name__}: {exc}"
        return None


class MetricsServer:
    def __init__(
        self,
        host: str,
        port: int,
        queue_collector: QueueCollector,
        redis_answers: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        if multiprocess_enabled():
            MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
        else:
            from prometheus_client import REGISTRY

            self.registry = REGISTRY
        self.registry.register(queue_collector)
        self.ready = threading.Event()
        # Set at worker_ready: False once the worker's blueprint stopped running (e.g. after an
        # "unrecoverable error"), so the liveness probe restarts a worker that hangs.
        self.running: Callable[[], bool] = lambda: True
        # Set at worker_ready: False while the consumer has no broker connection (lost, and
        # being made again: Celery retries after 2 s, 4 s, 6 s...). Redis answering a PING is
        # not enough: after a failover the new primary answers seconds before the consumer's
        # next attempt reaches it.
        self.consuming: Callable[[], bool] = lambda: True
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/metrics"):
                    self._reply(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
                elif self.path == "/healthz":
                    if server.running():
                        self._reply(200, b'{"status": "ok"}', "application/json")
                    else:
                        self._reply(503, b'{"status": "stopped"}', "application/json")
                elif self.path == "/readyz":
                    status, detail = server.readiness()
                    body = {"status": status, **({"detail": detail} if detail else {})}
                    code = 200 if status == "ready" else 503
                    self._reply(code, json.dumps(body).encode(), "application/json")
                else:
                    self._reply(404, b'{"detail": "not found"}', "application/json")

            def _reply(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # scrapes and probes every few seconds are not worth a log line

        self.redis_answers = redis_answers
        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def readiness(self) -> tuple[str, str | None]:
        """(status, why not): consuming and Redis answering, or the first thing that is not."""
        if not self.ready.is_set():
            return "starting", None
        if not self.running():
            return "stopped", None
        problem = self.redis_answers()
        if problem is None and not self.consuming():
            problem = "the consumer is reconnecting to the broker"
        return ("unavailable", problem) if problem else ("ready", None)

    def start(self) -> None:
        self._thread.start()


def worker_port_server(
    settings: Settings, priority_steps: list[int], server_class: type[MetricsServer] = MetricsServer
) -> MetricsServer:
    """The worker's port as a pod serves it, from a worker's main process or from the inline
    supervisor (``server_class``, which decides readiness there): the queue gauges under this
    process's lease, Redis's PING for readiness. Not started."""
    inspector = QueueInspector(create_redis(settings), settings.queues, priority_steps)
    holder = f"{socket.gethostname()}:{os.getpid()}"
    collector = QueueCollector(inspector, holder, settings.queue_metrics_lease_seconds)
    return server_class(
        settings.worker_metrics_host,
        settings.worker_metrics_port,
        collector,
        redis_answers=RedisProbe(create_redis(settings)),
    )
