"""Publishing a task: no producer span under a parent the sampler dropped.

Under an unsampled parent (a request the edge let through untraced, an unsampled task
retrying) such a publish only injects the current context into the message headers; the
worker reads "not sampled" from it. Every other publish goes to the official instrumentation
as is. Measured before: the dropped producer span was about 6 % of a submit.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from celery import signals
from opentelemetry import trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.propagate import inject
from opentelemetry.sdk.trace.sampling import Decision, Sampler
from opentelemetry.trace import SpanKind

# Whether the publish in progress skipped the instrumentation (before -> after publish).
_skipped: ContextVar[bool] = ContextVar("courier_producer_span_skipped", default=False)


def _dropped(sampler: Sampler, task_name: object) -> bool:
    """Would the SDK drop a producer span started here? Only asked under an unsampled parent."""
    parent = trace.get_current_span().get_span_context()
    if not parent.is_valid or parent.trace_flags.sampled:
        return False
    name = f"apply_async/{task_name}"
    decision = sampler.should_sample(None, parent.trace_id, name, SpanKind.PRODUCER).decision
    return decision is Decision.DROP


def skip_dropped_producer_spans(instrumentor: CeleryInstrumentor, sampler: Sampler) -> None:
    """Put the dropped-trace shortcut in front of the instrumentation's publish handlers."""
    before: Callable[..., None] = instrumentor._trace_before_publish
    after: Callable[..., None] = instrumentor._trace_after_publish
    signals.before_task_publish.disconnect(before)
    signals.after_task_publish.disconnect(after)

    def before_publish(*args: Any, **kwargs: Any) -> None:
        skip = _dropped(sampler, kwargs.get("sender"))
        _skipped.set(skip)  # always set: a failed publish never reaches after_publish
        if not skip:
            before(*args, **kwargs)
        elif headers := kwargs.get("headers"):
            inject(headers)

    def after_publish(*args: Any, **kwargs: Any) -> None:
        if not _skipped.get():
            after(*args, **kwargs)

    signals.before_task_publish.connect(before_publish, weak=False)
    signals.after_task_publish.connect(after_publish, weak=False)
