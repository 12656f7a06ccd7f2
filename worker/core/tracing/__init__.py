"""OpenTelemetry tracing for the API and the worker: one trace from the HTTP request through the
enqueue to the execution, and, where a trace is dropped, as little work as tracing off.

**The idea, once.** The official instrumentations (ASGI, Celery, Redis) do most of their
per-span work (attributes, span objects, context handling) whether or not the span will be
sampled; the SDK drops an unsampled span only after that work. Measured, that work was what
tracing cost with nothing sampled. So at every hop Courier asks the configured sampler
(``OTEL_TRACES_SAMPLER``) first, on the inputs the SDK would give it (the incoming W3C context,
the trace id, the span's name and kind):

- **kept**: the hop goes to the official instrumentation as is, which reaches the same verdict
  (a new trace's id is pinned, so a ratio sampler judges the id judged here);
- **dropped**: the hop skips the instrumentation and runs inside the span context the SDK
  itself would have given a dropped span (a fresh span id, "not sampled", the sampler's trace
  state), marked as dropped here. Log lines and responses still name the trace, the next hop
  propagates "not sampled", and client spans beneath it are never started.

**Modules.** ``setup`` installs the SDK from ``OTEL_*`` (once per process, after any fork) and
flushes it; ``sampler`` is the verdict (``HeadSampler``) and the pinned trace ids; one module per
hop: ``asgi`` (the API's edge: the instrumented or the plain middleware stack), ``producer``
(publishing a task), ``consumer`` (executing one), ``redis_spans`` (Redis commands: a span only
inside a kept trace). ``app/tracing.py`` only wires them into FastAPI.

The modules import one way: every hop imports ``sampler``; ``setup`` imports the hops inside
``instrument_libraries`` only (with tracing off no process loads the instrumentations).
"""
