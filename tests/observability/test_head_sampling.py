"""Head sampling at the API's edge: the SDK's decision, taken before the instrumentation runs.

A sampled request is traced from the server span to the execution; a dropped one leaves no
span anywhere (API or worker) yet still answers with a trace id that its log lines carry.
Real gunicorn, a real prefork worker, an OTLP receiver, ``parentbased_traceidratio`` at 0.5.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased

from tests.utils.live_stack import LiveStack, live_stack
from tests.utils.processes import wait_until

RATIO = 0.5
RUN, PUBLISH = "run/noop", "apply_async/noop"


Stack = LiveStack


@dataclass
class Submitted:
    task_id: str
    trace_id: str
    span_id: str
    sampled: bool


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    sampling = {
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": str(RATIO),
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    with live_stack(
        tmp_path_factory.mktemp("head-sampling"), sampling, tracing=True, worker="sampled"
    ) as running:
        yield running


def submit(stack: Stack, headers: dict[str, str] | None = None) -> Submitted:
    response = httpx.post(
        f"{stack.url}/v1/tasks/noop", json={"echo": 1}, headers=headers, timeout=10
    )
    assert response.status_code == 202, response.text
    trace_id = response.headers["X-Trace-Id"]
    version, traced_id, span_id, flags = response.headers["traceparent"].split("-")
    assert (version, traced_id) == ("00", trace_id)
    assert response.json()["trace_id"] == trace_id
    return Submitted(response.json()["id"], trace_id, span_id, bool(int(flags, 16) & 1))


def wait_finished(stack: Stack, submitted: list[Submitted]) -> None:
    def done() -> bool:
        return all(
            httpx.get(f"{stack.url}/v1/tasks/{s.task_id}", timeout=5).json()["status"]
            == "succeeded"
            for s in submitted
        )

    wait_until(done, 60, "every task to succeed")


def wait_for_trace(stack: Stack, trace_id: str) -> None:
    """The server span (API) and the execution span (worker) are exported by different
    processes: either can arrive first."""
    wait_until(
        lambda: {"server", "consumer"} <= {s.kind for s in stack.receiver.trace(trace_id)},
        30,
        f"the server and execution spans of trace {trace_id}",
    )


def orphans(stack: Stack) -> list[list[tuple[str, str]]]:
    """Traces with no server span at their root (a status poll's server span ends, and may be
    exported, after its Redis command's)."""
    found = []
    for trace_id in stack.receiver.trace_ids():
        spans = stack.receiver.trace(trace_id)
        if not any(x.kind == "server" and not x.parent_id for x in spans):
            found.append([(x.service, x.name) for x in spans])
    return found


def ratio_keeps(trace_id: str) -> bool:
    """What the SDK's own ratio sampler decides for this trace id."""
    result = TraceIdRatioBased(RATIO).should_sample(None, int(trace_id, 16), "POST")
    return result.decision is Decision.RECORD_AND_SAMPLE


def test_sampled_requests_are_traced_to_the_execution_and_dropped_ones_nowhere(
    stack: Stack,
) -> None:
    for _ in range(10):  # probes and scrapes: at 0.5, some would be kept if they were judged
        for path in ("/readyz", "/healthz", "/metrics"):
            assert httpx.get(f"{stack.url}{path}", timeout=5).status_code == 200
    submitted = [submit(stack) for _ in range(40)]
    wait_finished(stack, submitted)
    sampled = [s for s in submitted if s.sampled]
    dropped = [s for s in submitted if not s.sampled]
    assert sampled and dropped, "at 0.5, 40 requests are neither all kept nor all dropped"
    # The decision is the SDK's: the same trace id gets the same answer from its sampler.
    assert all(s.sampled == ratio_keeps(s.trace_id) for s in submitted)

    for s in sampled:
        wait_for_trace(stack, s.trace_id)
        spans = stack.receiver.trace(s.trace_id)
        (server,) = [x for x in spans if x.kind == "server"]
        (producer,) = [x for x in spans if x.name == PUBLISH]
        (consumer,) = [x for x in spans if x.name == RUN]
        assert server.span_id == s.span_id, "the response names the server span"
        assert server.parent_id == ""
        assert consumer.parent_id == producer.span_id
        assert producer.span_id != server.span_id
        # The execution's Redis commands (its result write at least) are in its trace.
        worker_clients = [x for x in spans if x.kind == "client" and x.service == "courier-worker"]
        assert worker_clients and all(x.parent_id == consumer.span_id for x in worker_clients)
    # Sampled traces (exported after the dropped ones were handled) are all in: nothing else came.
    for s in dropped:
        assert stack.receiver.trace(s.trace_id) == [], "a dropped request left spans behind"
    # Every trace starts at a request: none is a probe's Redis PING on its own.
    wait_until(lambda: not orphans(stack), 10, "no trace without a server span")

    # Dropped requests still carry their trace id into the worker's log lines.
    worker_trace_ids = {
        json.loads(line).get("trace_id")
        for line in stack.worker.output().splitlines()
        if line.startswith("{")
    }
    assert {s.trace_id for s in dropped} <= worker_trace_ids


def find_trace_id(keep: bool) -> str:
    """A fresh trace id that the ratio sampler would keep (or drop)."""
    while True:
        trace_id = format(random.getrandbits(128), "032x")
        if ratio_keeps(trace_id) == keep:
            return trace_id


@pytest.mark.parametrize("flags", ["01", "00"])
def test_an_incoming_traceparent_decides(stack: Stack, flags: str) -> None:
    # A trace id the ratio alone would decide the other way: only the parent's flag counts.
    trace_id = find_trace_id(keep=flags == "00")
    parent_span = "00f067aa0ba902b7"
    s = submit(stack, {"traceparent": f"00-{trace_id}-{parent_span}-{flags}"})
    wait_finished(stack, [s])
    assert s.trace_id == trace_id
    assert s.sampled == (flags == "01")
    if s.sampled:
        wait_for_trace(stack, trace_id)
        (server,) = [x for x in stack.receiver.trace(trace_id) if x.kind == "server"]
        assert server.parent_id == parent_span
    else:
        # A sampled trace submitted after it is exported: by then this one would be too.
        marker = submit(stack, {"traceparent": f"00-{find_trace_id(True)}-{parent_span}-01"})
        wait_for_trace(stack, marker.trace_id)
        assert stack.receiver.trace(trace_id) == []
