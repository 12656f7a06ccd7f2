"""One trace from the HTTP request through the enqueue to the execution, across processes."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.utils.live_stack import LiveStack, live_stack
from tests.utils.otlp import ReceivedSpan
from tests.utils.processes import Service, wait_until
from tests.utils.smtp import SmtpServer

TracedStack = LiveStack


@pytest.fixture(scope="module")
def traced(
    tmp_path_factory: pytest.TempPathFactory, smtp_server: SmtpServer
) -> Iterator[TracedStack]:
    common = {
        "COURIER_EMAIL_BACKEND": "smtp",
        "COURIER_SMTP_HOST": "127.0.0.1",
        "COURIER_SMTP_PORT": str(smtp_server.port),
        "COURIER_RETRY_BACKOFF_SECONDS": "0.05",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "COURIER_LOG_LEVEL": "DEBUG",  # the API's "task enqueued" line is DEBUG
    }
    # A 60 s batch delay and one task per child: only the flush at child exit delivers spans.
    with live_stack(
        tmp_path_factory.mktemp("tracing"),
        common,
        tracing=True,
        api_env={"OTEL_BSP_SCHEDULE_DELAY": "100"},
        worker_env={"OTEL_BSP_SCHEDULE_DELAY": "60000"},
        worker="traced",
        worker_args=("--max-tasks-per-child=1",),
    ) as running:
        yield running


def submit(stack: TracedStack, name: str, payload: dict[str, object]) -> tuple[str, str]:
    response = httpx.post(f"{stack.url}/v1/tasks/{name}", json=payload, timeout=10)
    assert response.status_code == 202, response.text
    trace_id = response.headers["X-Trace-Id"]
    assert response.headers["traceparent"].startswith(f"00-{trace_id}-")
    assert response.json()["trace_id"] == trace_id
    task_id = response.json()["id"]
    wait_until(
        lambda: (
            httpx.get(f"{stack.url}/v1/tasks/{task_id}", timeout=5).json()["status"]
            in ("succeeded", "failed")
        ),
        30,
        f"task {task_id} to finish",
    )
    return task_id, trace_id


def ancestors(span: ReceivedSpan, spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    by_id = {s.span_id: s for s in spans}
    chain = []
    while span.parent_id and span.parent_id in by_id:
        span = by_id[span.parent_id]
        chain.append(span)
    return chain


def only(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def test_request_enqueue_and_execution_form_one_trace(traced: TracedStack) -> None:
    task_id, trace_id = submit(traced, "noop", {"echo": "traced"})
    traced.receiver.wait_for(trace_id, "run/noop")
    traced.receiver.wait_for(trace_id, "apply_async/noop")
    wait_until(  # the API exports its server span after the producer span it encloses
        lambda: any(s.kind == "server" for s in traced.receiver.trace(trace_id)),
        10,
        "the API's server span",
    )
    spans = traced.receiver.trace(trace_id)

    consumer = only(spans, "run/noop")
    producer = only(spans, "apply_async/noop")
    assert (consumer.kind, consumer.service) == ("consumer", "courier-worker")
    assert (producer.kind, producer.service) == ("producer", "courier-api")
    assert consumer.parent_id == producer.span_id
    server = [s for s in ancestors(producer, spans) if s.kind == "server"]
    assert server and server[0].service == "courier-api"
    assert server[0].name.startswith("POST /v1/tasks/noop")
    assert consumer.attributes["courier.queue_wait_seconds"] >= 0
    # Redis calls made while executing belong to the same trace.
    assert any(s.kind == "client" and s.service == "courier-worker" for s in spans)
    # The enqueue write is the producer span: no Redis client span under it says it again.
    assert not [s.name for s in spans if s.parent_id == producer.span_id and s.kind == "client"]

    status = httpx.get(f"{traced.url}/v1/tasks/{task_id}", timeout=5).json()
    assert status["trace_id"] == trace_id


def test_retries_stay_in_the_trace_of_the_first_attempt(traced: TracedStack) -> None:
    _, trace_id = submit(traced, "send_email", {"to": "flaky-traced@example.com", "subject": "s"})
    traced.receiver.wait_for(trace_id, "run/send_email", count=2)
    spans = traced.receiver.trace(trace_id)
    runs = [s for s in spans if s.name == "run/send_email"]
    publishes = {s.span_id: s for s in spans if s.name == "apply_async/send_email"}
    assert len(runs) == 2
    retry_publish = [publishes[r.parent_id] for r in runs if r.parent_id in publishes]
    assert len(retry_publish) == 2
    first_run_ids = {r.span_id for r in runs}
    # One publish came from the API, the other from inside the first execution (the retry).
    assert sum(p.parent_id in first_run_ids for p in retry_publish) == 1


def test_log_lines_carry_the_trace_of_their_request(traced: TracedStack) -> None:
    task_id, trace_id = submit(traced, "noop", {"echo": "logged"})
    traced.receiver.wait_for(trace_id, "run/noop")

    def lines(service: Service) -> list[dict[str, object]]:
        parsed = []
        for line in service.output().splitlines():
            if line.startswith("{"):
                parsed.append(json.loads(line))
        return parsed

    api_lines = [e for e in lines(traced.api) if e.get("task_id") == task_id]
    assert api_lines and all(e["trace_id"] == trace_id and e["span_id"] for e in api_lines)
    worker_lines = [e for e in lines(traced.worker) if e.get("trace_id") == trace_id]
    assert any(task_id in str(e["message"]) for e in worker_lines), worker_lines
