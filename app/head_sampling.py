"""Head sampling at the edge: a request the sampler drops never enters the ASGI instrumentation.

The official ASGI middleware does its per-request work (route lookup, every header decoded
into attributes, duration attributes, a span through the sampler) whether or not the trace
is sampled: measured, that is a fifth of a submit's cost even with nothing sampled. Here the
configured sampler (``OTEL_TRACES_SAMPLER``) decides first, on the same inputs the SDK would
use (the incoming W3C context, the trace id):

- sampled: the request goes to the instrumented middleware stack, where the instrumentation
  makes the same decision again (the trace id is pinned, so a ratio sampler sees the id it saw
  here);
- dropped: the request goes to the plain stack, the one tracing off would run, inside a
  non-recording span that carries a fresh span id and the trace id, so responses and log lines
  still name a trace, and the Celery producer (child of this span) propagates "not sampled" to
  the worker, whose parent-based sampler drops the execution too. Exactly what the SDK itself
  would have made of a dropped server span.
"""

from __future__ import annotations

from opentelemetry import context, propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from starlette.types import ASGIApp, Receive, Scope, Send

from worker.core.telemetry import pin_next_trace_id, unpin_trace_id


class _ScopeHeaders(Getter[Scope]):
    """Header values straight from the ASGI scope's byte pairs, decoded only when they match."""

    def get(self, carrier: Scope, key: str) -> list[str] | None:
        name = key.lower().encode("latin-1")
        values = [v.decode("latin-1") for k, v in carrier.get("headers", ()) if k.lower() == name]
        return values or None

    def keys(self, carrier: Scope) -> list[str]:
        return [k.decode("latin-1") for k, _ in carrier.get("headers", ())]


_SCOPE_HEADERS = _ScopeHeaders()


class HeadSampling:
    def __init__(self, traced: ASGIApp, untraced: ASGIApp, provider: TracerProvider) -> None:
        self.traced = traced
        self.untraced = untraced
        self.sampler = provider.sampler
        self.ids = provider.id_generator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.traced(scope, receive, send)
            return
        parent = propagate.extract(scope, getter=_SCOPE_HEADERS)
        parent_span = trace.get_current_span(parent).get_span_context()
        remote = parent_span.is_valid
        trace_id = parent_span.trace_id if remote else self.ids.generate_trace_id()
        result = self.sampler.should_sample(
            parent, trace_id, scope.get("method", "HTTP"), SpanKind.SERVER
        )
        if result.decision is not Decision.DROP:
            pin = None if remote else pin_next_trace_id(trace_id)
            try:
                await self.traced(scope, receive, send)
            finally:
                if pin is not None:
                    unpin_trace_id(pin)
            return
        # The span context the SDK gives a dropped span (Tracer.start_span).
        random_id = (
            parent_span.trace_flags.random_trace_id if remote else self.ids.is_trace_id_random()
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
        token = context.attach(trace.set_span_in_context(span, parent))
        try:
            await self.untraced(scope, receive, send)
        finally:
            context.detach(token)
