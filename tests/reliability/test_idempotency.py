"""Idempotency-Key: one task per key and body, even under 50 concurrent identical requests."""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from tests.conftest import wait_for_status
from tests.utils.processes import courier_env, free_port, gunicorn, http_ok, wait_until
from tests.utils.prom import scrape, total


def test_a_repeated_key_and_body_returns_the_original_task(live_api: TestClient) -> None:
    headers = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
    first = live_api.post("/v1/tasks/noop", json={"echo": 1}, headers=headers)
    again = live_api.post("/v1/tasks/noop", json={"echo": 1}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert wait_for_status(live_api, first.json()["id"])["result"] == 1


def test_the_same_key_with_another_body_is_409(api: TestClient) -> None:
    headers = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
    assert api.post("/v1/tasks/noop", json={"echo": 1}, headers=headers).status_code == 202
    conflict = api.post("/v1/tasks/noop", json={"echo": 2}, headers=headers)
    assert conflict.status_code == 409
    assert "different request" in conflict.json()["detail"]
    # Options are part of the request too.
    delayed = api.post("/v1/tasks/noop", json={"echo": 1}, params={"countdown": 5}, headers=headers)
    assert delayed.status_code == 409


def test_keys_are_scoped_to_their_task(api: TestClient) -> None:
    headers = {"Idempotency-Key": f"shared-{uuid.uuid4()}"}
    assert api.post("/v1/tasks/noop", json={}, headers=headers).status_code == 202
    other = api.post("/v1/tasks/generate_report", json={"report_id": "r", "data": []},
                     headers=headers)  # fmt: skip
    assert other.status_code == 409  # same key, different request


def test_an_unusable_key_is_422(api: TestClient) -> None:
    response = api.post("/v1/tasks/noop", json={}, headers={"Idempotency-Key": "a\tb"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    too_long = api.post("/v1/tasks/noop", json={}, headers={"Idempotency-Key": "k" * 300})
    assert too_long.status_code == 422


def test_fifty_concurrent_identical_requests_enqueue_once(
    courier_vars: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    env = courier_env({**courier_vars, "COURIER_API_BIND": f"127.0.0.1:{port}",
                       "COURIER_API_WORKERS": "2"})  # fmt: skip
    server = gunicorn(env, tmp_path / "gunicorn.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{url}/readyz"), 30, "gunicorn")
        key = f"burst-{uuid.uuid4()}"

        def sent() -> float:
            return total(scrape(f"{url}/metrics"), "celery_task_sent_total", name="noop")

        before = sent()

        async def burst() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=50)
            async with httpx.AsyncClient(base_url=url, timeout=20, limits=limits) as client:
                return await asyncio.gather(
                    *(
                        client.post(
                            "/v1/tasks/noop",
                            json={"echo": "once"},
                            headers={"Idempotency-Key": key},
                        )
                        for _ in range(50)
                    )
                )

        responses = asyncio.run(burst())
        assert {r.status_code for r in responses} == {202}
        assert len({r.json()["id"] for r in responses}) == 1
        assert sum("Idempotent-Replayed" in r.headers for r in responses) == 49
        assert sent() - before == 1
    finally:
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(30)
        server.stop()
