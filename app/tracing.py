"""Trace ids on responses, so a client can find its request's trace."""

from __future__ import annotations

from opentelemetry import trace
from starlette.responses import Response


def set_trace_headers(response: Response) -> str | None:
    """Add ``X-Trace-Id`` and a W3C ``traceparent`` for the current span; returns the trace id."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    trace_id = format(context.trace_id, "032x")
    response.headers["X-Trace-Id"] = trace_id
    response.headers["traceparent"] = (
        f"00-{trace_id}-{format(context.span_id, '016x')}-{int(context.trace_flags):02x}"
    )
    return trace_id
