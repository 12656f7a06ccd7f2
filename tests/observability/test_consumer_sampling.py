"""Executing inside a dropped trace skips the consumer span and the Redis client spans.

Runs in a child process (the instrumentations and the tracer provider are process-global)
through Celery's own execution path, ``build_tracer``'s ``trace_task``: the function a
worker's pool child runs for every message, signals included, with a real Redis result
backend, so the result write and a Redis command in the task body go through the real
Redis instrumentation. The sampler counts what it is asked: a span that was never started
(not merely dropped) is one it was never asked about.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.utils.processes import ROOT, RedisServer

SCRIPT = r"""
import json, logging, sys
import redis
from celery import Celery, signals
from celery.app.trace import build_tracer
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from worker.core.tracing.sampler import PinnableIdGenerator
from worker.core.tracing.setup import instrument_libraries

redis_url = sys.argv[1]
warnings = []
class Catch(logging.Handler):
    def emit(self, record):
        warnings.append(record.getMessage())
logging.getLogger("opentelemetry").addHandler(Catch(logging.WARNING))

class Asked(ParentBased):
    names = []
    def should_sample(self, parent_context, trace_id, name, *args, **kwargs):
        self.names.append(name)
        return super().should_sample(parent_context, trace_id, name, *args, **kwargs)

# Trace ids in the order new traces ask for them: a ratio of 0.5 keeps the first, drops the second.
KEEP, DROP = 0x11111111111111110000000000000001, 0x2222222222222222ffffffffffffffff
OUTER = 0x33333333333333330000000000000002
class Scripted(RandomIdGenerator):
    ids = iter([KEEP, DROP, OUTER])
    def generate_trace_id(self):
        return next(self.ids, None) or super().generate_trace_id()
class Ids(PinnableIdGenerator, Scripted):
    pass

exporter = InMemorySpanExporter()
provider = TracerProvider(sampler=Asked(TraceIdRatioBased(0.5)), id_generator=Ids())
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
instrument_libraries(provider)  # as the worker's pool children do

app = Celery("t", broker="memory://", backend=redis_url)
client = redis.Redis.from_url(redis_url)
seen = []

@app.task(name="probe", bind=True)
def probe(self, retry=False):
    span = trace.get_current_span()
    c = span.get_span_context()
    seen.append({"trace_id": format(c.trace_id, "032x"), "span_id": format(c.span_id, "016x"),
                 "sampled": c.trace_flags.sampled, "recording": span.is_recording()})
    client.get("courier-test-probe")
    if retry and not self.request.retries:
        raise self.retry(countdown=0)

published = []
@signals.before_task_publish.connect(weak=False)
def _published(headers=None, **_):
    published.append(headers.get("traceparent"))

run = build_tracer("probe", probe, app=app, hostname="w1")

def execute(task_id, traceparent=None, retry=False):
    asked = len(Asked.names)
    exporter.clear()
    request = {"id": task_id, "task": "probe", "hostname": "w1", "delivery_info": {}}
    if traceparent:
        request["traceparent"] = traceparent
    run(task_id, [], {"retry": retry}, request)
    after = trace.get_current_span().get_span_context()
    return {
        "seen": seen[-1],
        "asked": Asked.names[asked:],
        "spans": [(s.name, s.kind.name, format(s.context.trace_id, "032x"),
                   format(s.context.span_id, "016x"),
                   format(s.parent.span_id, "016x") if s.parent else None)
                  for s in exporter.get_finished_spans()],
        "context_left": after.is_valid,
    }

def outside_any_trace():
    asked = len(Asked.names)
    client.get("courier-test-probe")
    client.pipeline().get("a").get("b").execute()
    return {"asked": Asked.names[asked:], "spans": len(exporter.get_finished_spans())}

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
out = {
    "orphan": outside_any_trace(),
    "dropped": execute("t1", f"00-{TRACE}-00f067aa0ba902b7-00", retry=True),
    "sampled": execute("t2", f"00-{TRACE}-00f067aa0ba902b7-01"),
    "new_kept": execute("t3"),
    "new_dropped": execute("t4"),
}
with provider.get_tracer("test").start_as_current_span("outer") as outer:
    out["outer_span"] = format(outer.get_span_context().span_id, "016x")
    out["nested"] = execute("t5")
out.update({
    "published": published,
    "warnings": warnings,
})
print(json.dumps(out))
"""

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def out(redis_server: RedisServer) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, redis_server.url],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_no_warnings_from_the_instrumentation(out: dict[str, Any]) -> None:
    assert out["warnings"] == []  # e.g. "no existing span found" from a skipped handler


def test_no_redis_span_outside_a_trace(out: dict[str, Any]) -> None:
    # A readiness probe's PING, the broker's housekeeping: not a trace of their own.
    assert out["orphan"] == {"asked": [], "spans": 0}


def test_a_dropped_execution_starts_no_span(out: dict[str, Any]) -> None:
    dropped = out["dropped"]
    # The task ran in the trace, under a span id of its own, not sampled, recording nothing...
    assert dropped["seen"]["trace_id"] == TRACE
    assert dropped["seen"]["span_id"] not in (PARENT, "0" * 16)
    assert not dropped["seen"]["sampled"] and not dropped["seen"]["recording"]
    # ...and no span was started: the sampler judged the execution and the retry's publish,
    # never a Redis command (the body's GET, the result write).
    assert dropped["asked"] == ["run/probe", "apply_async/probe"]
    assert dropped["spans"] == []
    assert not dropped["context_left"]
    # The retry carries the trace and its verdict on, from the execution's span.
    assert out["published"] == [f"00-{TRACE}-{dropped['seen']['span_id']}-00"]


def test_a_sampled_execution_is_traced_by_the_instrumentation(out: dict[str, Any]) -> None:
    sampled = out["sampled"]
    assert sampled["seen"]["recording"] and sampled["seen"]["trace_id"] == TRACE
    consumer = [s for s in sampled["spans"] if s[1] == "CONSUMER"]
    assert [(s[0], s[2], s[4]) for s in consumer] == [("run/probe", TRACE, PARENT)]
    redis_spans = [s for s in sampled["spans"] if s[1] == "CLIENT"]
    assert redis_spans and all(s[4] == consumer[0][3] for s in redis_spans)
    assert not sampled["context_left"]


def test_a_new_trace_is_judged_on_the_id_the_sdk_then_uses(out: dict[str, Any]) -> None:
    kept, dropped = out["new_kept"], out["new_dropped"]
    # Without the pinned id the SDK would draw the next id (the one that is dropped) itself.
    assert kept["seen"]["recording"]
    assert kept["seen"]["trace_id"] == f"{0x11111111111111110000000000000001:032x}"
    assert [s[0] for s in kept["spans"] if s[1] == "CONSUMER"] == ["run/probe"]
    assert not dropped["seen"]["recording"] and not dropped["seen"]["sampled"]
    assert dropped["seen"]["trace_id"] == f"{0x2222222222222222FFFFFFFFFFFFFFFF:032x}"
    assert dropped["spans"] == [] and dropped["asked"] == ["run/probe"]


def test_a_task_applied_inside_a_span_runs_as_its_child(out: dict[str, Any]) -> None:
    nested = out["nested"]
    assert nested["seen"]["trace_id"] == f"{0x33333333333333330000000000000002:032x}"
    consumer = [s for s in nested["spans"] if s[1] == "CONSUMER"]
    assert [(s[0], s[4]) for s in consumer] == [("run/probe", out["outer_span"])]
