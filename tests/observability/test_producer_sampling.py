"""Publishing inside a dropped trace skips the producer span; a sampled publish keeps it.

Runs in a child process: the instrumentation and the tracer provider are process-global.
The signals are Celery's own, sent as Celery sends them around a publish.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.utils.processes import ROOT

SCRIPT = r"""
import json, logging
from celery import Celery, signals
from opentelemetry import trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, ALWAYS_ON
from worker.core.tracing.producer import skip_dropped_producer_spans

warnings = []
class Catch(logging.Handler):
    def emit(self, record):
        warnings.append(record.getMessage())
logging.getLogger("opentelemetry.instrumentation.celery").addHandler(Catch(logging.WARNING))

app = Celery("t")
@app.task(name="noop")
def noop():
    pass

exporter = InMemorySpanExporter()
provider = TracerProvider(sampler=ParentBased(ALWAYS_ON))
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
instrumentor = CeleryInstrumentor()
instrumentor.instrument(tracer_provider=provider)
skip_dropped_producer_spans(instrumentor, provider.sampler)
tracer = provider.get_tracer("test")

def publish(task_id, after=True):
    headers = {"id": task_id, "task": "noop"}
    kwargs = dict(sender="noop", body=((), {}, {}), exchange="", routing_key="celery",
                  headers=headers)
    signals.before_task_publish.send(**kwargs)
    if after:
        signals.after_task_publish.send(**kwargs)
    return headers.get("traceparent")

dropped = trace.NonRecordingSpan(trace.SpanContext(
    0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7, False, trace.TraceFlags(0)))
out = {}
with trace.use_span(dropped):
    out["dropped_traceparent"] = publish("t1")
    out["failed_traceparent"] = publish("t2", after=False)  # the publish raised: no after
with tracer.start_as_current_span("server") as server:
    out["sampled_traceparent"] = publish("t3")
    out["server_span"] = format(server.get_span_context().span_id, "016x")
out["spans"] = [(s.name, s.kind.name, format(s.parent.span_id, "016x") if s.parent else None)
                for s in exporter.get_finished_spans()]
out["warnings"] = warnings
print(json.dumps(out))
"""


def test_dropped_trace_publishes_its_context_and_sampled_one_its_producer_span() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    # Under the dropped span: its own context goes into the message, not sampled.
    assert out["dropped_traceparent"] == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
    assert out["failed_traceparent"] == out["dropped_traceparent"]
    # A sampled publish after a skipped one that never completed: its producer span ends.
    names = [(name, kind) for name, kind, _ in out["spans"]]
    assert names == [("apply_async/noop", "PRODUCER"), ("server", "INTERNAL")]
    producer_parent = out["spans"][0][2]
    assert producer_parent == out["server_span"]
    assert int(out["sampled_traceparent"].split("-")[3], 16) & 1  # sampled
    assert out["sampled_traceparent"].split("-")[2] != out["server_span"]  # the producer's id
    assert out["warnings"] == []  # no "no existing span found" from a skipped publish
