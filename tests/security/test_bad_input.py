"""Bad input always gets a clear 4xx with a JSON body saying what is wrong."""

from __future__ import annotations

import math
import signal
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


# A bad option answers a short, human message, never the number it was given in full (a
# 309-digit 1e308). The body has an unknown field, so nothing is enqueued even when the options
# are fine: the answer is a 422 either way, and says which of them was wrong.
SHORT = 200
NOT_A_PAYLOAD = {"unknown_field": 1}
VISIBILITY_TIMEOUT = 60  # COURIER_BROKER_VISIBILITY_TIMEOUT in tests/conftest.py


def option_errors(api: TestClient, params: dict[str, str]) -> dict[str, str]:
    """The 422's message per query option; every message (options and body) is short."""
    response = api.post("/v1/tasks/noop", json=NOT_A_PAYLOAD, params=params)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert all(len(error["msg"]) < SHORT for error in detail), detail
    return {error["loc"][1]: error["msg"] for error in detail if error["loc"][0] == "query"}


def rendered(x: float) -> st.SearchStrategy[str]:
    return st.sampled_from(
        [repr(x), f"{x:f}", f"{x:e}", f"{x:.0f}" if math.isfinite(x) else str(x)]
    )


@given(st.floats(allow_nan=True, allow_infinity=True).flatmap(rendered))
@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_any_countdown_is_accepted_or_refused_in_a_short_message(
    api: TestClient, text: str
) -> None:
    # Decided on the text as sent: 60.4 rendered with "{:.0f}" is "60", a valid countdown.
    errors = option_errors(api, {"countdown": text})
    valid = math.isfinite(float(text)) and 0 <= float(text) <= VISIBILITY_TIMEOUT
    assert ("countdown" not in errors) == valid, (text, errors)


@pytest.mark.parametrize("countdown", ["1e308", f"{1e308:f}", "-1e308", "1e309", "inf", "nan"])
def test_a_huge_countdown_names_the_bound_not_the_number(api: TestClient, countdown: str) -> None:
    message = option_errors(api, {"countdown": countdown})["countdown"]
    assert "000000" not in message and "e+308" not in message, message


def test_a_countdown_past_the_visibility_timeout_names_the_timeout(api: TestClient) -> None:
    message = option_errors(api, {"countdown": "1e308"})["countdown"]
    assert f"{VISIBILITY_TIMEOUT} s" in message and "visibility timeout" in message


@given(st.datetimes(timezones=st.just(UTC)) | st.datetimes())
@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_any_eta_is_accepted_or_refused_in_a_short_message(api: TestClient, eta: datetime) -> None:
    errors = option_errors(api, {"eta": eta.isoformat()})
    ahead = (eta.replace(tzinfo=eta.tzinfo or UTC) - datetime.now(UTC)).total_seconds()
    if ahead > VISIBILITY_TIMEOUT + 5:
        assert "eta" in errors
    elif ahead < VISIBILITY_TIMEOUT - 5:
        assert "eta" not in errors, errors


@given(
    countdown=st.text(max_size=400) | st.integers().map(str),
    priority=st.text(max_size=400) | st.integers(min_value=-(10**400), max_value=10**400).map(str),
    queue=st.text(max_size=400),
)
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_any_option_text_gets_short_messages(
    api: TestClient, countdown: str, priority: str, queue: str
) -> None:
    option_errors(api, {"countdown": countdown, "priority": priority, "queue": queue})
