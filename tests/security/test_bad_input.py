"""Bad input always gets a clear 4xx with a JSON body saying what is wrong."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import wait_for_status
from tests.utils.processes import courier_env, free_port, gunicorn, http_ok, wait_until

UNICODE = "Zoë 🚀 中文 \u202e ‮ \u0000x"


def test_wrong_content_type_is_415_naming_json(api: TestClient) -> None:
    response = api.post(
        "/v1/tasks/noop", content=b'{"echo": 1}', headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 415
    assert "application/json" in response.json()["detail"]


def test_a_json_array_body_is_422(api: TestClient) -> None:
    response = api.post("/v1/tasks/noop", json=[1, 2])
    assert response.status_code == 422


@pytest.mark.parametrize(
    "params",
    [
        {"countdown": "-1"},
        {"countdown": "1e300"},
        {"countdown": "inf"},
        {"countdown": "nan"},
        {"eta": "not-a-date"},
        {"eta": "9999-12-31T23:59:59Z"},
        {"priority": "10"},
        {"priority": "-1"},
    ],
)
def test_bad_options_are_422(api: TestClient, params: dict[str, str]) -> None:
    response = api.post("/v1/tasks/noop", json={}, params=params)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][0] == "query"


def test_an_eta_in_the_past_runs_now(live_api: TestClient, submit: Callable[..., str]) -> None:
    eta = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    assert wait_for_status(live_api, submit("noop", {"echo": "late"}, eta=eta))["result"] == "late"


def test_an_eta_with_an_idempotency_key_is_accepted(api: TestClient) -> None:
    eta = (datetime.now(UTC) + timedelta(seconds=30)).isoformat()
    response = api.post(
        "/v1/tasks/noop",
        json={},
        params={"eta": eta},
        headers={"Idempotency-Key": str(uuid.uuid4())},
    )
    assert response.status_code == 202


def test_unicode_survives_every_field(live_api: TestClient, submit: Callable[..., str]) -> None:
    done = wait_for_status(live_api, submit("noop", {"echo": {UNICODE: [UNICODE]}}))
    assert done["result"] == {UNICODE: [UNICODE]}
    report = wait_for_status(
        live_api,
        submit("generate_report", {"report_id": "u-1", "data": [{UNICODE: UNICODE}]}),
    )
    assert report["status"] == "succeeded"
    csv = live_api.get(f"/v1/artifacts/{report['result']['artifact_id']}").text
    assert UNICODE.replace("\u0000", "") in csv.replace("\u0000", "")


def test_unicode_in_a_username_is_a_clear_422(api: TestClient) -> None:
    response = api.post("/users/register", params={"username": UNICODE, "email": "u@example.com"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "username"]


def test_huge_headers_are_refused_by_the_server(
    courier_vars: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    env = courier_env({**courier_vars, "COURIER_API_BIND": f"127.0.0.1:{port}"})
    server = gunicorn(env, tmp_path / "gunicorn.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{url}/healthz"), 30, "gunicorn")
        response = httpx.get(f"{url}/v1/tasks", headers={"X-Big": "a" * 200_000}, timeout=5)
        assert response.status_code == 431
        assert "16384" in response.json()["detail"]
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    finally:
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(30)
        server.stop()
