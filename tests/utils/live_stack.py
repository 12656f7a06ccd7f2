"""A whole Courier of real processes, for the tests that watch it from outside.

Its own redis-server, the API under gunicorn on a free port, a Celery worker with its metrics
server on another, and an OTLP receiver that both export to when tracing is on.
The tests that use it (tracing, head sampling, Prometheus, secrets) differ only in the
environment they add, so they share this one start-up and tear-down: everything started is
stopped on the way out, also when a later start failed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.utils.otlp import OtlpReceiver
from tests.utils.processes import (
    RedisServer,
    Service,
    celery_worker,
    courier_env,
    free_port,
    gunicorn,
    http_ok,
    wait_until,
)

READY_TIMEOUT = 60.0


@dataclass
class LiveStack:
    """The running processes and where they answer."""

    redis: RedisServer
    api: Service
    worker: Service
    receiver: OtlpReceiver  # empty unless started with tracing
    url: str  # the API
    metrics_url: str  # the worker's metrics server (/metrics, /healthz, /readyz)
    env: dict[str, str]  # what both were given, COURIER_* and OTEL_* alike


@contextlib.contextmanager
def live_stack(
    tmp: Path,
    env: Mapping[str, str] | None = None,
    *,
    tracing: bool = False,
    api_env: Mapping[str, str] | None = None,
    worker_env: Mapping[str, str] | None = None,
    worker: str = "live",
    worker_args: tuple[str, ...] = (),
    redis_args: tuple[str, ...] = (),
    redis_url: Callable[[RedisServer], str] | None = None,
) -> Iterator[LiveStack]:
    """Start it under ``tmp`` (logs, Redis's directory) and wait until the API and the worker
    say ready. ``env`` goes to both; ``api_env`` / ``worker_env`` to one, over it. ``tracing``
    points OTLP export at the receiver. ``worker``: the worker's node name. ``redis_url`` builds
    the URL both use (a password, say) from the server."""
    api_port, metrics_port = free_port(), free_port()
    with contextlib.ExitStack() as processes:
        receiver = processes.enter_context(OtlpReceiver())
        server = processes.enter_context(RedisServer(tmp / "redis", extra_args=redis_args))
        common = {
            "COURIER_REDIS_URL": redis_url(server) if redis_url else server.url,
            "COURIER_API_BIND": f"127.0.0.1:{api_port}",
            "COURIER_WORKER_METRICS_PORT": str(metrics_port),
        }
        if tracing:
            common |= {
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "OTEL_TRACES_EXPORTER": "otlp",
            }
        common |= env or {}
        api = processes.enter_context(
            gunicorn(courier_env({**common, **(api_env or {})}), tmp / "api.log")
        )
        running = processes.enter_context(
            celery_worker(
                courier_env({**common, **(worker_env or {})}),
                tmp / "worker.log",
                worker,
                extra_args=worker_args,
            )
        )
        stack = LiveStack(
            server,
            api,
            running,
            receiver,
            f"http://127.0.0.1:{api_port}",
            f"http://127.0.0.1:{metrics_port}",
            common,
        )
        wait_until(lambda: http_ok(f"{stack.url}/readyz"), READY_TIMEOUT, f"the API ({api.log})")
        wait_until(
            lambda: http_ok(f"{stack.metrics_url}/readyz"),
            READY_TIMEOUT,
            f"the worker ({running.log})",
        )
        yield stack
