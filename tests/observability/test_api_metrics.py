"""The API's /metrics: RED per route template, enqueue outcomes, gunicorn multiprocess sums."""

from __future__ import annotations

import re
import signal
import socket
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from tests.utils.processes import Service, courier_env, free_port, gunicorn, http_ok, wait_until
from tests.utils.prom import label_values, scrape, total
from worker.core.names import DEFAULT_QUEUE

TASK_ID = "0b1c2d3e-0000-4000-8000-00000000abcd"


def api_samples(api: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    samples = {}
    for family in text_string_to_metric_families(api.get("/metrics").text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def test_requests_are_counted_by_route_template_never_by_raw_path(api: TestClient) -> None:
    before = total(
        api_samples(api), "courier_http_requests_total", route="/v1/tasks/{task_id}", status="404"
    )
    api.get(f"/v1/tasks/{TASK_ID}")
    api.get("/v1/tasks/another-unknown-id")
    samples = api_samples(api)
    after = total(samples, "courier_http_requests_total", route="/v1/tasks/{task_id}", status="404")
    assert after - before == 2
    routes = label_values(samples, "courier_http_requests_total", "route")
    assert not any(TASK_ID in route or "another-unknown-id" in route for route in routes)
    assert total(samples, "courier_http_request_duration_seconds_count", method="GET") > 0
    assert ("courier_http_requests_in_progress", frozenset({("method", "GET")})) in samples


def test_a_made_up_method_is_labelled_other(api: TestClient) -> None:
    before = total(api_samples(api), "courier_http_requests_total", method="other")
    assert api.request("BREW", "/healthz").status_code == 405
    samples = api_samples(api)
    assert total(samples, "courier_http_requests_total", method="other") - before == 1
    assert "BREW" not in label_values(samples, "courier_http_requests_total", "method")


def test_enqueue_outcomes_are_counted_by_task(api: TestClient) -> None:
    def count(name: str, outcome: str) -> float:
        return total(api_samples(api), "courier_tasks_enqueued_total", name=name, outcome=outcome)

    accepted, rejected = count("noop", "accepted"), count("noop", "rejected")
    unknown = count("unknown", "rejected")
    assert api.post("/v1/tasks/noop", json={}).status_code == 202
    assert api.post("/v1/tasks/noop", json={"sleep_seconds": -1}).status_code == 422
    assert api.post("/v1/tasks/noop", json={"echo": "x" * 5000}).status_code == 413
    assert api.post("/v1/tasks/made-up-name", json={}).status_code == 404
    assert count("noop", "accepted") - accepted == 1
    assert count("noop", "rejected") - rejected == 2
    assert count("unknown", "rejected") - unknown == 1
    samples = api_samples(api)
    assert "made-up-name" not in label_values(samples, "courier_tasks_enqueued_total", "name")
    # The 413 never reached the router, yet it is labelled with its route template.
    assert total(samples, "courier_http_requests_total", route="/v1/tasks/noop", status="413") >= 1
    assert total(samples, "celery_task_sent_total", name="noop", queue_name=DEFAULT_QUEUE) >= 1
    # The host, as the worker's metrics and celery-exporter write it (not a node name celery@vm).
    assert label_values(samples, "celery_task_sent_total", "hostname") == {socket.gethostname()}


def test_gunicorn_workers_share_one_exposition(
    courier_vars: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    metrics_dir = tmp_path / "metrics"
    env = courier_env(
        {
            **courier_vars,
            "COURIER_API_BIND": f"127.0.0.1:{port}",
            "COURIER_API_WORKERS": "2",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        }
    )
    server: Service = gunicorn(env, tmp_path / "gunicorn.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{url}/healthz"), 30, "gunicorn")
        requests = 200
        # A fresh connection per request lets the kernel spread them over both workers.
        for _ in range(requests):
            assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        pids = {
            m.group(1) for f in metrics_dir.glob("*.db") if (m := re.search(r"_(\d+)\.db$", f.name))
        }
        assert len(pids) >= 2, f"only {pids} wrote metrics"
        samples = scrape(f"{url}/metrics")
        served = total(samples, "courier_http_requests_total", route="/healthz", status="200")
        assert served >= requests  # plus the readiness polls before
        assert served <= requests + 200
    finally:
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(30)
        server.stop()
