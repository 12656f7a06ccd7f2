"""The API's edge: a request goes to the instrumented or the plain middleware stack.

- kept: the instrumented stack (the official ASGI middleware), with the judged trace id pinned;
- dropped: the plain stack, the one tracing off would run, inside the dropped context, so the
  Celery producer (a child of it) propagates "not sampled" to the worker;
- excluded (probes, scrapes): the plain stack, outside any trace.
"""

from __future__ import annotations

from collections.abc import Collection

from opentelemetry import context, propagate
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind
from starlette.types import ASGIApp, Receive, Scope, Send

from worker.core.tracing.sampler import HeadSampler, pinned_trace_id


class _ScopeHeaders(Getter[Scope]):
    """Header values straight from the ASGI scope's byte pairs, decoded only when they match."""

    def get(self, carrier: Scope, key: str) -> list[str] | None:
        name = key.lower().encode("latin-1")
        values = [v.decode("latin-1") for k, v in carrier.get("headers", ()) if k.lower() == name]
        return values or None

    def keys(self, carrier: Scope) -> list[str]:
        return [k.decode("latin-1") for k, _ in carrier.get("headers", ())]


_SCOPE_HEADERS = _ScopeHeaders()


class TracedOrPlain:
    """The ASGI app at the edge: each request to ``traced`` or ``untraced`` by the verdict."""

    def __init__(
        self,
        traced: ASGIApp,
        untraced: ASGIApp,
        provider: TracerProvider,
        excluded_paths: Collection[str] = (),
    ) -> None:
        self.traced = traced
        self.untraced = untraced
        self.head = HeadSampler(provider)
        self.excluded_paths = excluded_paths
        # The headers the configured propagators (OTEL_PROPAGATORS) read: most requests carry
        # none of them, and then there is nothing to extract.
        fields = propagate.get_global_textmap().fields
        self.context_headers = frozenset(name.lower().encode("latin-1") for name in fields)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.traced(scope, receive, send)
            return
        if scope["path"] in self.excluded_paths:
            await self.untraced(scope, receive, send)  # as with tracing off: no trace at all
            return
        if any(name in self.context_headers for name, _ in scope["headers"]):
            parent = propagate.extract(scope, getter=_SCOPE_HEADERS)
        else:
            parent = Context()
        verdict = self.head.judge(parent, scope.get("method", "HTTP"), SpanKind.SERVER)
        if verdict.dropped is None:
            with pinned_trace_id(verdict.new_trace_id):
                await self.traced(scope, receive, send)
            return
        token = context.attach(verdict.dropped)
        try:
            await self.untraced(scope, receive, send)
        finally:
            context.detach(token)
