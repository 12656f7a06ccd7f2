"""Submit responses carry trace headers only while tracing is on (docs/observability/tracing.md)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from worker.core.tracing.setup import tracing_enabled


def test_a_submit_answers_no_trace_headers_while_tracing_is_off(api: TestClient) -> None:
    assert not tracing_enabled()  # the in-process API of the suite runs without an exporter
    response = api.post("/v1/tasks/noop", json={"echo": "untraced"})
    assert response.status_code == 202, response.text
    assert "X-Trace-Id" not in response.headers
    assert "traceparent" not in response.headers
    assert response.json()["trace_id"] is None
