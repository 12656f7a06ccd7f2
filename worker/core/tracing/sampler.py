"""The sampler's verdict on a span before any instrumentation starts it, and pinned trace ids.

``HeadSampler.judge`` is the verdict every hop asks for (the package docstring says why); a
dropped verdict carries the context to run the hop's work in, marked so that
``in_dropped_trace`` sees it. ``PinnableIdGenerator`` lets a kept verdict's new trace id be the
one the SDK then uses: ratio samplers decide on the id's bits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from opentelemetry import context, trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

_DROPPED = context.create_key("courier-trace-dropped-at-head")
_pinned_trace_id: ContextVar[int | None] = ContextVar("courier_pinned_trace_id", default=None)


class PinnableIdGenerator(RandomIdGenerator):
    """Random ids, except that the next trace id can be chosen ahead of the span.

    A sampling decision taken before a span exists (head sampling at the API's edge) is only
    the SDK's own decision if the SDK then samples the same trace id: ratio samplers decide
    on the id's bits.
    """

    def generate_trace_id(self) -> int:
        pinned = _pinned_trace_id.get()
        if pinned is None:
            return super().generate_trace_id()
        _pinned_trace_id.set(None)  # one root span only
        return pinned


@contextmanager
def pinned_trace_id(trace_id: int | None) -> Iterator[None]:
    """While a root span starts: its trace gets ``trace_id`` (``None``: a random one)."""
    if trace_id is None:
        yield
        return
    token = _pinned_trace_id.set(trace_id)
    try:
        yield
    finally:
        _pinned_trace_id.reset(token)


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
