"""``create_app()``: wiring only — settings, clients, middleware, routers, error handlers.

``uvicorn app.main:app`` serves it for development; gunicorn uses ``app.gunicorn_conf``.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from prometheus_client import CollectorRegistry

from app.api.errors import register_error_handlers
from app.api.routes import artifacts, dead_letters, health, queues, seed, tasks
from app.api.security import RateLimiter
from app.atomic_write import Replication
from app.failover_audit import auditing, failover_audit
from app.idempotency import IdempotentSubmitter
from app.memory_watermark import MemoryWatermark
from app.middleware.body_limit import BodySizeLimitMiddleware
from app.middleware.metrics import MetricsMiddleware, metrics_endpoint, submit_paths
from app.middleware.submit_dispatch import SubmitDispatchMiddleware
from app.middleware.tracing import NATIVE_TELEMETRY_OFF, instrument_fastapi
from app.purge import QueuePurger
from app.queue import TaskQueue
from app.users import UserStore
from worker.celery_config import PRIORITY_STEPS, create_celery_app
from worker.core.artifacts import ArtifactCalls
from worker.core.dead_letters import DeadLetterCalls
from worker.core.logging import configure_logging
from worker.core.names import SEND_EMAIL_TASK
from worker.core.publish_signals import connect_publisher_signals
from worker.core.queue_stats import QueueInspector
from worker.core.records import RecordCalls
from worker.core.redis_client import create_async_redis, create_redis
from worker.core.settings import Settings, get_settings
from worker.core.tracing.setup import init_tracing
from worker.metrics_server import QueueCollector
from worker.registry import registered_tasks

# Multipart framing around an upload: headers, boundary lines.
MULTIPART_OVERHEAD = 64 * 1024
API_SERVICE_NAME = "courier-api"


def queue_metrics(client: redis.Redis, settings: Settings) -> CollectorRegistry:
    """The queue gauges, exported by this pod while no worker is alive and it holds the lease
    (one holder per pod: any of its gunicorn processes answers a scrape with them)."""
    registry = CollectorRegistry(auto_describe=False)
    inspector = QueueInspector(client, settings.queues, PRIORITY_STEPS)
    holder = f"api@{socket.gethostname()}"
    lease = settings.queue_metrics_lease_seconds
    registry.register(QueueCollector(inspector, holder, lease, defer_to_workers=True))
    return registry


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    aclient = create_async_redis(settings)
    # Blocking, for the queue gauges only: prometheus_client collects synchronously, and the
    # /metrics endpoint runs that collection in a thread (app.middleware.metrics).
    gauges_client = create_redis(settings)
    celery = create_celery_app(settings)
    watermark = MemoryWatermark(aclient, settings.redis_memory_high_watermark)
    journal, auditor = failover_audit(settings, aclient)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        logging.getLogger("courier.api").info("api starting", extra={"queues": settings.queues})
        watermark.start()
        async with auditing(auditor):
            yield
        app.state.queue.close()
        await watermark.close()
        gauges_client.close()
        await aclient.aclose()
        celery.close()

    # /docs and /redoc load their scripts and styles from this app, not a CDN: they work offline.
    app = FastAPIOffline(
        title="Courier",
        version="0.1.0",
        description="Background tasks over HTTP: submit, poll, cancel; Celery + Redis underneath.",
        lifespan=lifespan,
        telemetry=NATIVE_TELEMETRY_OFF,
    )
    app.state.settings = settings
    app.state.redis = aclient
    app.state.queue = TaskQueue(
        celery,
        RecordCalls(settings.result_expires),
        settings.default_queue,
        aclient,
        watermark=watermark,
        replication=Replication.from_settings(settings),
        journal=journal,
    )
    app.state.dead_letters = DeadLetterCalls(
        settings.dead_letter_max, settings.dead_letter_max_bytes
    )
    app.state.purger = QueuePurger(aclient, celery.backend, settings.result_expires, PRIORITY_STEPS)
    app.state.artifacts = ArtifactCalls(settings.artifact_ttl)
    app.state.users = UserStore(aclient)
    app.state.idempotency = IdempotentSubmitter(aclient)
    app.state.api_keys = settings.api_key_list()
    app.state.rate_limiter = RateLimiter(
        aclient, settings.rate_limit_per_second, settings.rate_limit_burst
    )
    if not app.state.api_keys:
        logging.getLogger("courier.api").warning(
            "NO API KEY CONFIGURED: every endpoint is open to anyone who can reach it; "
            "set COURIER_API_KEYS"
        )

    def body_limit(path: str) -> int:
        if path.startswith("/v1/artifacts"):
            return settings.max_upload_bytes + MULTIPART_OVERHEAD
        return settings.max_payload_bytes

    specs = registered_tasks()
    # Innermost: a common submit skips the layers below it (routing, FastAPI's wrappers).
    app.add_middleware(SubmitDispatchMiddleware)
    app.add_middleware(
        BodySizeLimitMiddleware,
        limit_for_path=body_limit,
        max_header_bytes=settings.max_header_bytes,
    )
    register_error_handlers(app)
    app.include_router(health.router)
    app.include_router(tasks.build_router(specs))
    app.include_router(artifacts.router)
    app.include_router(dead_letters.router)
    app.include_router(queues.router)
    app.include_router(seed.router)
    if settings.metrics_enabled:
        app.add_route(
            "/metrics",
            metrics_endpoint(queue_metrics(gauges_client, settings)),
            include_in_schema=False,
        )
    # Outermost, so 413s and errors are counted too.
    app.add_middleware(
        MetricsMiddleware,
        templates=lambda: [*app.openapi()["paths"], "/metrics"],
        enqueue_paths=submit_paths(specs, {"/send-email": SEND_EMAIL_TASK}),
    )
    connect_publisher_signals()
    init_tracing(API_SERVICE_NAME)
    instrument_fastapi(app)
    return app


def __getattr__(name: str) -> FastAPI:
    # ``app.main:app`` for uvicorn, built on first access so importing this module has no effects.
    if name == "app":
        return create_app()
    raise AttributeError(name)
