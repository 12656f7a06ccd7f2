"""Redis commands: a client span only inside a kept trace.

A command outside any trace (a readiness probe's PING, the broker's housekeeping, the worker's
heartbeat, a queue-depth scrape) would otherwise start a trace of one span, noise that says
nothing; one under a dropped trace would start a span the sampler then drops. The Redis
instrumentation gets its tracer from ``ChildSpansOnly``, which starts neither: the command runs
under the current span, as with tracing off.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, Tracer, TracerProvider
from opentelemetry.util._decorator import _agnosticcontextmanager  # what the API types expect

from worker.core.tracing.sampler import in_dropped_trace


def _untraced(ctx: Context | None) -> Span | None:
    """The span a command runs under when it starts none: outside any trace, or a dropped one."""
    current = trace.get_current_span(ctx)
    if in_dropped_trace(ctx) or not current.get_span_context().is_valid:
        return current
    return None


class _ChildSpansTracer(Tracer):
    """Passes every argument through to the SDK's tracer, unless there is nothing to trace."""

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    def start_span(
        self, name: str, context: Context | None = None, *args: Any, **kwargs: Any
    ) -> Span:
        untraced = _untraced(context)
        if untraced is not None:
            return untraced
        return self._tracer.start_span(name, context, *args, **kwargs)

    @_agnosticcontextmanager
    def start_as_current_span(
        self, name: str, context: Context | None = None, *args: Any, **kwargs: Any
    ) -> Iterator[Span]:
        untraced = _untraced(context)
        if untraced is not None:
            yield untraced
            return
        with self._tracer.start_as_current_span(name, context, *args, **kwargs) as span:
            yield span


class ChildSpansOnly(TracerProvider):
    """Tracers that start a span only as a child of a sampled (or not yet judged) one."""

    def __init__(self, provider: TracerProvider) -> None:
        self._provider = provider

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> Tracer:
        tracer = self._provider.get_tracer(
            instrumenting_module_name, instrumenting_library_version, schema_url, attributes
        )
        return _ChildSpansTracer(tracer)
