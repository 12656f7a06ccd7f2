"""Executing a dropped task: no consumer span, only the trace's context.

The official Celery instrumentation opens a consumer span for every execution; under a trace
the sampler drops, the SDK drops it after the instrumentation did its work for it. Here the
sampler is asked first (``HeadSampler``, same inputs as the SDK's: the context in the message
headers, the trace id, the span's name and kind). A kept execution goes to the instrumentation
as is; a dropped one runs in the span context the SDK would have given its consumer span, so
log lines carry the trace id and a retry, published from it, propagates "not sampled"; that
context is marked dropped, so the Redis commands of the task and of its result write start no
span either (``client_spans``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import signals
from opentelemetry import context
from opentelemetry.instrumentation.celery import CeleryInstrumentor, celery_getter
from opentelemetry.propagate import extract
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind

from worker.core.head_decision import HeadSampler
from worker.core.telemetry import pinned_trace_id

# On the task's request (pushed before task_prerun, popped after task_postrun): the token of
# the dropped execution's context.
_DROPPED_CONTEXT = "courier_dropped_trace_token"


def skip_dropped_consumer_spans(instrumentor: CeleryInstrumentor, provider: TracerProvider) -> None:
    """Put the sampler's verdict in front of the instrumentation's execution handlers."""
    prerun: Callable[..., None] = instrumentor._trace_prerun
    postrun: Callable[..., None] = instrumentor._trace_postrun
    signals.task_prerun.disconnect(prerun)
    signals.task_postrun.disconnect(postrun)
    head = HeadSampler(provider)

    def task_prerun(*args: Any, **kwargs: Any) -> None:
        task = kwargs.get("task")
        if task is None or kwargs.get("task_id") is None:
            prerun(*args, **kwargs)  # nothing to trace: the instrumentation says so itself
            return
        # As the instrumentation: the message's context, else the current one (a task applied
        # from inside another runs as its child).
        parent = extract(task.request, getter=celery_getter) or context.get_current()
        verdict = head.judge(parent, f"run/{task.name}", SpanKind.CONSUMER)
        if verdict.dropped is None:
            with pinned_trace_id(verdict.new_trace_id):
                prerun(*args, **kwargs)
            return
        setattr(task.request, _DROPPED_CONTEXT, context.attach(verdict.dropped))

    def task_postrun(*args: Any, **kwargs: Any) -> None:
        request = getattr(kwargs.get("task"), "request", None)
        token = getattr(request, _DROPPED_CONTEXT, None)
        if token is None:
            postrun(*args, **kwargs)
            return
        setattr(request, _DROPPED_CONTEXT, None)
        context.detach(token)

    signals.task_prerun.connect(task_prerun, weak=False)
    signals.task_postrun.connect(task_postrun, weak=False)
