"""API keys: 401 without, 403 with a wrong one, Bearer or X-API-Key, health open."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import settings_from

KEYS = ("first-key-0123456789", "second-key-9876543210")


@pytest.fixture(scope="module")
def secured(courier_vars: dict[str, str]) -> Iterator[TestClient]:
    settings = settings_from({**courier_vars, "COURIER_API_KEYS": ",".join(KEYS)})
    with TestClient(create_app(settings)) as client:
        yield client


PROTECTED = [
    ("GET", "/v1/tasks"),
    ("POST", "/v1/tasks/noop"),
    ("GET", "/v1/tasks/some-id"),
    ("DELETE", "/v1/tasks/some-id"),
    ("GET", f"/v1/artifacts/{'a' * 32}"),
    ("POST", "/send-email?to=a@example.com&subject=s&body=b"),
    ("GET", "/tasks/some-id"),
    ("POST", "/users/register?username=u&email=u@example.com"),
    ("DELETE", "/users/1"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_every_api_endpoint_needs_a_key(secured: TestClient, method: str, path: str) -> None:
    response = secured.request(method, path, json={} if method == "POST" else None)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "API key" in response.json()["detail"]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_a_wrong_key_is_403(secured: TestClient, method: str, path: str) -> None:
    response = secured.request(
        method, path, json={} if method == "POST" else None, headers={"X-API-Key": "nope"}
    )
    assert response.status_code == 403
    assert response.json() == {"detail": "invalid API key"}


def test_bearer_and_header_keys_both_work(secured: TestClient) -> None:
    bearer = secured.get("/v1/tasks", headers={"Authorization": f"Bearer {KEYS[0]}"})
    header = secured.get("/v1/tasks", headers={"X-API-Key": KEYS[1]})
    assert bearer.status_code == header.status_code == 200


def test_health_probes_stay_open(secured: TestClient) -> None:
    assert secured.get("/healthz").status_code == 200
    assert secured.get("/readyz").status_code == 200


def test_keys_can_come_from_a_mounted_file(tmp_path: Path, courier_vars: dict[str, str]) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("from-file-key\nanother-file-key\n")
    settings = settings_from({**courier_vars, "COURIER_API_KEYS": str(key_file)})
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/tasks", headers={"X-API-Key": "another-file-key"}).status_code == 200
        assert client.get("/v1/tasks", headers={"X-API-Key": str(key_file)}).status_code == 403


def test_openapi_documents_both_schemes(secured: TestClient) -> None:
    schemes = secured.get("/openapi.json").json()["components"]["securitySchemes"]
    assert {"HTTPBearer", "APIKeyHeader"} <= set(schemes)


def test_no_key_configured_logs_a_loud_warning(
    courier_vars: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    create_app(settings_from(courier_vars))
    warning = [line for line in capsys.readouterr().err.splitlines() if "NO API KEY" in line]
    assert warning and '"level": "WARNING"' in warning[0]
