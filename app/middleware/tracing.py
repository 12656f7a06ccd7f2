"""FastAPI's wiring of ``worker/core/tracing``: the official instrumentation behind the edge's
sampling switch, and trace ids on responses."""

from __future__ import annotations

import re

from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig
from opentelemetry import trace
from starlette.responses import Response
from starlette.types import ASGIApp

from worker.core.tracing.asgi import TracedOrPlain
from worker.core.tracing.setup import tracer_provider, tracing_enabled

# Probes and scrapes: noise in traces, so they run untraced (TracedOrPlain). The official
# middleware gets the same list as anchored patterns: it searches the whole URL, so a bare
# "metrics" would also exclude e.g. /v1/tasks/metrics.rollup.
EXCLUDED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
EXCLUDED_URLS = ",".join(rf"^https?://[^/]+{re.escape(path)}$" for path in sorted(EXCLUDED_PATHS))
# FastAPI's own (native) telemetry stays off: the official instrumentation owns the server span,
# and the provider is ours (worker.core.tracing.setup), never configured by FastAPI from OTEL_*.
NATIVE_TELEMETRY_OFF: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "auto_configure": False,
}


def instrument_fastapi(app: FastAPI) -> None:
    if not tracing_enabled():
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    build_plain = app.build_middleware_stack
    # No internal span per ASGI send/receive: two or three extra spans on every request,
    # each encoded and exported, that say nothing the server span does not.
    FastAPIInstrumentor.instrument_app(
        app, excluded_urls=EXCLUDED_URLS, exclude_spans=["receive", "send"]
    )
    build_instrumented = app.build_middleware_stack

    def build_middleware_stack() -> ASGIApp:
        # Built on the first request, after gunicorn's post_fork installed the provider.
        provider = tracer_provider()
        if provider is None:
            return build_instrumented()
        return TracedOrPlain(build_instrumented(), build_plain(), provider, EXCLUDED_PATHS)

    app.build_middleware_stack = build_middleware_stack  # type: ignore[method-assign]


def trace_ids() -> tuple[str, str] | None:
    """The current span's trace id and W3C ``traceparent``; None outside a valid span."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    trace_id = format(context.trace_id, "032x")
    traceparent = f"00-{trace_id}-{format(context.span_id, '016x')}-{int(context.trace_flags):02x}"
    return trace_id, traceparent


def set_trace_headers(response: Response) -> str | None:
    """Add ``X-Trace-Id`` and a W3C ``traceparent`` for the current span; returns the trace id."""
    ids = trace_ids()
    if ids is None:
        return None
    response.headers["X-Trace-Id"], response.headers["traceparent"] = ids
    return ids[0]
