"""The head-sampling edge in process, with the real SDK: routing, the pinned trace id, the stack."""

from __future__ import annotations

import asyncio

import pytest
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind
from opentelemetry.util.http import parse_excluded_urls
from starlette.types import Receive, Scope, Send

from app.middleware import tracing
from worker.core.tracing.asgi import TracedOrPlain
from worker.core.tracing.sampler import PinnableIdGenerator

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


class Recorder:
    """An ASGI app that notes the span context it runs in, and what a server span would be."""

    def __init__(self, provider: TracerProvider) -> None:
        self.tracer = provider.get_tracer("test")
        self.contexts: list[trace.SpanContext] = []
        self.server_spans: list[trace.SpanContext] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.contexts.append(trace.get_current_span().get_span_context())
        span = self.tracer.start_span("POST", kind=SpanKind.SERVER)
        self.server_spans.append(span.get_span_context())
        span.end()


def scope(traceparent: str | None = None, path: str = "/v1/tasks/noop") -> Scope:
    headers = [(b"host", b"api")]
    if traceparent:
        headers.append((b"traceparent", traceparent.encode()))
    return {"type": "http", "method": "POST", "path": path, "headers": headers}


def run(edge: TracedOrPlain, s: Scope) -> None:
    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b""}

    async def send(message: object) -> None:
        pass

    asyncio.run(edge(s, receive, send))


@pytest.fixture
def edge() -> tuple[TracedOrPlain, Recorder, Recorder]:
    provider = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(0.5)), id_generator=PinnableIdGenerator()
    )
    traced, untraced = Recorder(provider), Recorder(provider)
    return TracedOrPlain(traced, untraced, provider, tracing.EXCLUDED_PATHS), traced, untraced


Edge = tuple[TracedOrPlain, Recorder, Recorder]


def test_kept_requests_are_kept_by_the_sdk_too(edge: Edge) -> None:
    head, traced, _ = edge
    for _ in range(200):
        run(head, scope())
    assert 50 < len(traced.server_spans) < 150, "about half are kept"
    # The SDK samples the id the edge decided on; without the pin it would keep only ~half.
    assert all(s.trace_flags.sampled for s in traced.server_spans)
    assert len({s.trace_id for s in traced.server_spans}) == len(traced.server_spans)


def test_dropped_requests_run_in_a_non_recording_span_with_ids(edge: Edge) -> None:
    head, _, untraced = edge
    for _ in range(100):
        run(head, scope())
    assert untraced.contexts
    for context, server in zip(untraced.contexts, untraced.server_spans, strict=True):
        assert context.is_valid and not context.trace_flags.sampled
        # What runs inside (the Celery producer span) is dropped too, in the same trace.
        assert server.trace_id == context.trace_id and not server.trace_flags.sampled


@pytest.mark.parametrize("flags", ["00", "01"])
def test_the_parent_flag_decides(edge: Edge, flags: str) -> None:
    head, traced, untraced = edge
    run(head, scope(f"00-{TRACE_ID}-{PARENT}-{flags}"))
    if flags == "01":  # the instrumentation takes the request and continues the trace itself
        assert (len(traced.contexts), len(untraced.contexts)) == (1, 0)
    else:
        assert (len(traced.contexts), len(untraced.contexts)) == (0, 1)
        assert format(untraced.contexts[0].trace_id, "032x") == TRACE_ID
        assert format(untraced.server_spans[0].trace_id, "032x") == TRACE_ID


def test_probes_and_scrapes_run_outside_any_trace(edge: Edge) -> None:
    head, traced, untraced = edge
    for path in sorted(tracing.EXCLUDED_PATHS):
        run(head, scope(f"00-{TRACE_ID}-{PARENT}-01", path=path))
    assert traced.contexts == []
    assert [c.is_valid for c in untraced.contexts] == [False] * len(tracing.EXCLUDED_PATHS)


def test_the_instrumentation_excludes_those_paths_and_no_other() -> None:
    excluded = parse_excluded_urls(tracing.EXCLUDED_URLS)
    for path in tracing.EXCLUDED_PATHS:
        assert excluded.url_disabled(f"http://api:8000{path}")
    for url in ("http://api/v1/tasks/metrics", "http://api/v1/artifacts/readyz", "http://api/"):
        assert not excluded.url_disabled(url)


def _has_otel_middleware(stack: object) -> bool:
    while stack is not None:
        if isinstance(stack, OpenTelemetryMiddleware):
            return True
        stack = getattr(stack, "app", None)
    return False


def test_the_app_runs_the_instrumented_or_the_plain_stack(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    provider = TracerProvider(id_generator=PinnableIdGenerator())
    monkeypatch.setattr(tracing, "tracer_provider", lambda: provider)
    app = FastAPI()
    tracing.instrument_fastapi(app)
    try:
        stack = app.build_middleware_stack()
        assert isinstance(stack, TracedOrPlain)
        assert _has_otel_middleware(stack.traced)
        assert not _has_otel_middleware(stack.untraced)  # as if tracing were off
    finally:
        FastAPIInstrumentor.uninstrument_app(app)
