"""The worker's own HTTP port: ``/metrics`` (all pool children summed) and ``/healthz``.

It runs in the worker's main process. ``/healthz`` answers from memory, so a liveness probe
never touches the broker. The cluster-wide queue gauges are exported by one worker at a time,
the holder of a short Redis lease, so ``sum()`` (celery-exporter's dashboards) and ``max()``
(Courier's autoscaling) both read one series per queue however many workers are scraped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from worker.core.metrics import queue_families
from worker.core.multiproc import multiprocess_enabled
from worker.core.names import QUEUE_METRICS_LEASE_KEY
from worker.core.queue_stats import QueueInspector
from worker.core.redis_client import REDIS_ERRORS

logger = logging.getLogger(__name__)


class QueueCollector(Collector):
    def __init__(self, inspector: QueueInspector, holder: str, lease_seconds: float) -> None:
        self._inspector = inspector
        self._holder = holder
        self._lease_seconds = lease_seconds

    def describe(self) -> list[Metric]:
        return []  # nothing to collect at registration time

    def collect(self) -> Iterator[Metric]:
        try:
            if not self._inspector.hold_lease(
                QUEUE_METRICS_LEASE_KEY, self._holder, self._lease_seconds
            ):
                return
            stats = self._inspector.stats()
            workers = self._inspector.workers_per_queue()
        except REDIS_ERRORS as exc:
            logger.warning("queue metrics unavailable", extra={"error": str(exc)})
            return
        yield from queue_families(stats, workers)


class MetricsServer:
    def __init__(self, host: str, port: int, queue_collector: QueueCollector) -> None:
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
                    ok = server.ready.is_set()
                    body = b'{"status": "ready"}' if ok else b'{"status": "starting"}'
                    self._reply(200 if ok else 503, body, "application/json")
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

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()
