"""The sampler's verdict on a span before any instrumentation starts it.

The official instrumentations (ASGI, Celery, Redis) do most of their per-span work whether or
not the span will be sampled: measured, that is what tracing costs when nothing is sampled.
Asking the configured sampler (``OTEL_TRACES_SAMPLER``) first, on the inputs the SDK would
give it (the incoming W3C context, the trace id, the span's name and kind), lets a dropped
request or task skip that work. A kept one goes to the instrumentation, which reaches the
same verdict: a new trace's id is pinned, so a ratio sampler sees the id it saw here.

A dropped one runs inside the span context the SDK itself gives a dropped span (a fresh span
id, "not sampled", the sampler's trace state), so log lines and responses still name the
trace and the next hop propagates the verdict. The context also says the trace was dropped
here (``in_dropped_trace``), so client spans beneath it need not be started at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry import context, trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

_DROPPED = context.create_key("courier-trace-dropped-at-head")


def in_dropped_trace(ctx: Context | None = None) -> bool:
    return bool(context.get_value(_DROPPED, ctx))


@dataclass(frozen=True)
class Verdict:
    # The context to run a dropped span's work in; None when the span is kept.
    dropped: Context | None
    # The trace id the sampler judged, to pin (``pinned_trace_id``) when the kept span starts
    # a new trace.
    new_trace_id: int | None


class HeadSampler:
    def __init__(self, provider: TracerProvider) -> None:
        self.sampler = provider.sampler
        self.ids = provider.id_generator

    def judge(self, parent: Context, name: str, kind: SpanKind) -> Verdict:
        parent_span = trace.get_current_span(parent).get_span_context()
        has_parent = parent_span.is_valid
        trace_id = parent_span.trace_id if has_parent else self.ids.generate_trace_id()
        result = self.sampler.should_sample(parent, trace_id, name, kind)
        if result.decision is not Decision.DROP:
            return Verdict(None, None if has_parent else trace_id)
        # As Tracer.start_span builds a dropped span's context.
        random_id = (
            parent_span.trace_flags.random_trace_id if has_parent else self.ids.is_trace_id_random()
        )
        flags = TraceFlags(TraceFlags.RANDOM_TRACE_ID if random_id else TraceFlags.DEFAULT)
        span = NonRecordingSpan(
            SpanContext(
                trace_id,
                self.ids.generate_span_id(),
                is_remote=False,
                trace_flags=flags,
                trace_state=result.trace_state,
            )
        )
        dropped = context.set_value(_DROPPED, True, trace.set_span_in_context(span, parent))
        return Verdict(dropped, None)
