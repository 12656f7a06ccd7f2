"""The seed's endpoints keep their paths, parameters and shapes."""

from __future__ import annotations

import json
from collections.abc import Callable

import redis
from fastapi.testclient import TestClient

from tests.utils.processes import wait_until
from tests.utils.smtp import SmtpServer
from worker.core.names import AUDIT_LOG_KEY


def audit_entries(client: redis.Redis) -> list[dict[str, object]]:
    return [json.loads(raw) for raw in client.lrange(AUDIT_LOG_KEY, 0, 50)]


def test_register_returns_at_once_then_emails_and_audits_in_background(
    api: TestClient,
    smtp_server: SmtpServer,
    redis_client: redis.Redis,
    unique: Callable[[str], str],
) -> None:
    username = unique("alice")
    address = f"{username}@example.com"
    response = api.post("/users/register", params={"username": username, "email": address})
    assert response.status_code == 200
    user = response.json()
    assert (user["username"], user["email"]) == (username, address)

    welcome = smtp_server.handler.wait_for(address)
    assert welcome["Subject"] == "Welcome to Courier"
    assert username in welcome.get_payload()
    entry = wait_until(
        lambda: next(
            (e for e in audit_entries(redis_client) if e.get("user_id") == user["user_id"]), None
        ),
        5,
        "the audit entry",
    )
    assert entry["action"] == "user.registered"


def test_register_rejects_an_invalid_email_with_422(api: TestClient) -> None:
    response = api.post("/users/register", params={"username": "bob", "email": "not-an-email"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "email"]


def test_register_twice_with_one_username_is_409(
    api: TestClient, unique: Callable[[str], str]
) -> None:
    username = unique("carol")
    params = {"username": username, "email": "carol@example.com"}
    assert api.post("/users/register", params=params).status_code == 200
    response = api.post("/users/register", params=params)
    assert response.status_code == 409
    assert username in response.json()["detail"]


def test_delete_user_removes_it_and_audits(
    api: TestClient, redis_client: redis.Redis, unique: Callable[[str], str]
) -> None:
    username = unique("dave")
    user_id = api.post(
        "/users/register", params={"username": username, "email": "dave@example.com"}
    ).json()["user_id"]
    response = api.delete(f"/users/{user_id}")
    assert response.status_code == 200
    assert response.json()["user_id"] == user_id
    assert api.delete(f"/users/{user_id}").status_code == 404
    wait_until(
        lambda: any(
            e["action"] == "user.deleted" and e["user_id"] == user_id
            for e in audit_entries(redis_client)
        ),
        5,
        "the deletion audit entry",
    )
    # The username is free again.
    again = api.post("/users/register", params={"username": username, "email": "d@example.com"})
    assert again.status_code == 200


def test_send_email_queues_a_task_that_delivers_it(
    live_api: TestClient, smtp_server: SmtpServer, unique: Callable[[str], str]
) -> None:
    address = f"{unique('erin')}@example.com"
    response = live_api.post(
        "/send-email", params={"to": address, "subject": "Hi", "body": "Hello from the seed"}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "queued"

    delivered = smtp_server.handler.wait_for(address)
    assert delivered["Subject"] == "Hi"
    assert "Hello from the seed" in delivered.get_payload()

    status = wait_until(
        lambda: (
            (s := live_api.get(f"/tasks/{body['task_id']}").json())["status"] == "SUCCESS" and s
        ),
        10,
        "SUCCESS",
    )
    assert status["task_id"] == body["task_id"]
    assert status["result"]["to"] == address


def test_send_email_rejects_an_invalid_address(api: TestClient) -> None:
    response = api.post("/send-email", params={"to": "nobody", "subject": "s", "body": "b"})
    assert response.status_code == 422


def test_seed_status_of_an_unknown_id_is_404(api: TestClient) -> None:
    assert api.get("/tasks/never-issued").status_code == 404
