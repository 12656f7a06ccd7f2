"""Executing a task: the verdict before the official Celery instrumentation's consumer span.

A kept execution goes to the instrumentation as is; a dropped one runs in the dropped context
(log lines carry the trace id, a retry published from it propagates "not sampled", and the
Redis commands of the task and of its result write start no span).
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

from worker.core.tracing.sampler import HeadSampler, pinned_trace_id

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
