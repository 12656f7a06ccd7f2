"""RED metrics per route template and enqueue outcomes, as pure ASGI middleware; ``/metrics``.

Labels are bounded: routes are templates (``/v1/tasks/{task_id}``), task names come from the
registry, anything else is ``unknown``; methods outside the usual seven are ``other``. Under
gunicorn the exposition sums every worker process (multiprocess mode, ``PROMETHEUS_MULTIPROC_DIR``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.core import metrics
from worker.core.multiproc import multiprocess_enabled

UNMATCHED = "unmatched"
# The method label: what the API serves, and "other" for any token a client sends (httptools
# limits methods to its own list, h11 and other servers do not).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"


def submit_paths(task_names: Iterable[str], seed_aliases: Mapping[str, str]) -> dict[str, str]:
    """POST paths that enqueue, mapped to the task name they enqueue."""
    paths = {f"/v1/tasks/{name}": name for name in task_names}
    paths.update(seed_aliases)
    return paths


def outcome_of(status: int) -> str:
    if status < 400:
        return "accepted"
    return "rejected" if status < 500 else "failed"


def template_matcher(templates: Iterable[str]) -> Callable[[str], str]:
    """Path -> route template, literal templates first (``/v1/tasks/noop`` before ``{id}``)."""
    ordered = sorted(templates, key=lambda t: (t.count("{"), t))
    patterns = [
        (re.compile("^" + re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(t)) + "$"), t) for t in ordered
    ]

    def match(path: str) -> str:
        return next((t for pattern, t in patterns if pattern.match(path)), UNMATCHED)

    return match


class MetricsMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        templates: Callable[[], Iterable[str]],
        enqueue_paths: Mapping[str, str],
    ) -> None:
        self.app = app
        self.templates = templates
        self.enqueue_paths = enqueue_paths
        self._match: Callable[[str], str] | None = None

    def _enqueued(self, task: str, outcome: str) -> Any:
        # Bounded by the registry (task names, or "unknown") times the three outcomes.
        return metrics.labelled(metrics.TASKS_ENQUEUED, task, outcome)

    def _route_of(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is not None:
            return str(getattr(route, "path", UNMATCHED))
        # The router never ran (e.g. a 413 from the body limit): match the template here.
        if self._match is None:
            self._match = template_matcher(self.templates())
        return self._match(scope["path"])

    def _task_of(self, method: str, path: str) -> str | None:
        if method != "POST":
            return None
        if path in self.enqueue_paths:
            return self.enqueue_paths[path]
        return "unknown" if path.startswith("/v1/tasks/") else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"] if scope["method"] in METHODS else OTHER_METHOD
        status = 500
        started = time.perf_counter()

        async def observing_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        in_progress = metrics.HTTP_IN_PROGRESS.labels(method)
        in_progress.inc()
        try:
            await self.app(scope, receive, observing_send)
        finally:
            in_progress.dec()
            route = self._route_of(scope)
            metrics.HTTP_DURATION.labels(method, route).observe(time.perf_counter() - started)
            metrics.HTTP_REQUESTS.labels(method, route, str(status)).inc()
            task = self._task_of(method, scope["path"])
            if task is not None:
                self._enqueued(task, outcome_of(status)).inc()


def _registry() -> CollectorRegistry:
    if multiprocess_enabled():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


def metrics_endpoint(
    queue_registry: CollectorRegistry | None = None,
) -> Callable[[Request], Awaitable[Response]]:
    """``/metrics``: this pod's processes, then the cluster-wide queue gauges when this pod holds
    their lease (``queue_registry``). The API pods are up whether or not any worker is, so the
    backlog stays exported, and its alerts and a scale-from-zero autoscaler keep working, while
    every worker is down; workers and API pods share one lease, so one of them exports it."""

    async def endpoint(_: Request) -> Response:
        body = generate_latest(_registry())
        if queue_registry is not None:  # Redis reads (lease, lengths): off the event loop
            body += await run_in_threadpool(generate_latest, queue_registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return endpoint
