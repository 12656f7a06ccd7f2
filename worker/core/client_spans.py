"""Redis client spans only inside a sampled request or task.

A Redis command outside any trace (a readiness probe's PING, the broker's housekeeping in a
solo worker, the worker's heartbeat, a queue-depth scrape) would otherwise start a trace of
one span: noise in the tracing backend that says nothing. A command under a trace dropped at
the head (``head_decision``) would start a span the sampler then drops, after the SDK and the
instrumentation did the work for it. The Redis instrumentation gets its tracer from this
provider, which starts neither: the command runs under the current span, as it would with
tracing off. Every other span, and the context every propagator injects, are untouched.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Tracer, TracerProvider
from opentelemetry.util._decorator import _agnosticcontextmanager  # what the API types expect

from worker.core.head_decision import in_dropped_trace


def _nothing_to_trace(ctx: Context | None) -> bool:
    if in_dropped_trace(ctx):
        return True
    return not trace.get_current_span(ctx).get_span_context().is_valid


class _ChildSpansTracer(Tracer):
    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, Any] | None = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> Span:
        if _nothing_to_trace(context):
            return trace.get_current_span(context)
        return self._tracer.start_span(
            name, context, kind, attributes, links, start_time, record_exception,
            set_status_on_exception,
        )  # fmt: skip

    @_agnosticcontextmanager
    def start_as_current_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, Any] | None = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[Span]:
        if _nothing_to_trace(context):
            yield trace.get_current_span(context)
            return
        with self._tracer.start_as_current_span(
            name, context, kind, attributes, links, start_time, record_exception,
            set_status_on_exception, end_on_exit,
        ) as span:  # fmt: skip
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
