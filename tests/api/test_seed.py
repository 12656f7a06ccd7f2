"""The seed's endpoints keep their paths, parameters and shapes."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import redis
from fastapi.testclient import TestClient
from httpx2 import Response

from tests.utils.monitor import monitored
from tests.utils.processes import RedisServer, wait_until
from tests.utils.smtp import SmtpServer
from worker.core.names import AUDIT_LOG_KEY, USER_ID_SEQ_KEY, USERNAMES_KEY, USERS_KEY


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


def register(api: TestClient, username: str) -> Response:
    return api.post("/users/register", params={"username": username, "email": "u@example.com"})


def test_register_and_delete_answer_the_seeds_bodies(
    api: TestClient, unique: Callable[[str], str]
) -> None:
    username = unique("Frances")
    registered = api.post(
        "/users/register", params={"username": username, "email": "f@example.com"}
    )
    assert registered.status_code == 200
    body = registered.json()
    user_id = body["user"]["id"]
    assert body["message"] == "Registration complete"
    assert body["user"] == {"id": user_id, "username": username, "email": "f@example.com"}
    assert body["user_id"] == user_id  # Courier's earlier keys stay for its own clients
    deleted = api.delete(f"/users/{user_id}")
    assert deleted.status_code == 200
    assert deleted.json()["message"] == f"User {user_id} deleted"


def test_a_taken_username_uses_up_no_user_id(api: TestClient, unique: Callable[[str], str]) -> None:
    first = register(api, unique("grace")).json()["user"]["id"]
    taken = unique("hopper")
    assert register(api, taken).json()["user"]["id"] == first + 1
    assert register(api, taken).status_code == 409
    assert register(api, taken).status_code == 409
    assert register(api, unique("lovelace")).json()["user"]["id"] == first + 2


def test_usernames_are_unique_whatever_their_case(
    api: TestClient, unique: Callable[[str], str]
) -> None:
    username = unique("Ada")
    user = register(api, username).json()["user"]
    assert user["username"] == username  # stored as given
    for variant in (username.lower(), username.upper(), username.swapcase()):
        conflict = register(api, variant)
        assert conflict.status_code == 409
        assert "already registered" in conflict.json()["detail"]
    assert api.delete(f"/users/{user['id']}").status_code == 200
    assert register(api, username.upper()).status_code == 200  # free again, in any case


def test_concurrent_registrations_of_one_name_make_one_user_and_consecutive_ids(
    api: TestClient, unique: Callable[[str], str]
) -> None:
    contested = unique("Barbara")
    variants = [contested, contested.lower(), contested.upper()] * 8
    others = [unique(f"liskov{i}") for i in range(8)]
    start = threading.Barrier(len(variants) + len(others))

    def attempt(name: str) -> Response:
        start.wait(30)
        return register(api, name)

    with ThreadPoolExecutor(len(variants) + len(others)) as pool:
        contested_answers = list(pool.map(attempt, variants + others))
    answers, contested_answers = contested_answers, contested_answers[: len(variants)]
    assert sorted(r.status_code for r in contested_answers) == [200] + [409] * (len(variants) - 1)
    assert all(r.status_code == 200 for r in answers[len(variants) :])
    ids = sorted(r.json()["user"]["id"] for r in answers if r.status_code == 200)
    assert len(ids) == len(others) + 1
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # no id used up by a conflict


def test_registration_and_deletion_are_each_one_step_in_redis(
    api: TestClient, redis_server: RedisServer, unique: Callable[[str], str]
) -> None:
    """One script each: no crash or concurrent request can fall between claiming the name,
    taking an id and storing the user (a name claimed by a request that died before storing
    its user could never be registered nor freed)."""
    with monitored(redis_server.url) as commands:
        user_id = register(api, unique("katherine")).json()["user"]["id"]
        assert api.delete(f"/users/{user_id}").status_code == 200
    user_keys = {USERS_KEY, USERNAMES_KEY, USER_ID_SEQ_KEY}
    sent = [c for c in commands if c["client_type"] != "lua"]
    touching = [c["command"] for c in sent if set(c["command"].split()) & user_keys]
    assert [command.split()[0].upper() for command in touching] == ["EVALSHA", "EVALSHA"]
    scripted = [c["command"].split()[0].upper() for c in commands if c["client_type"] == "lua"]
    assert {"INCR", "HSET", "HDEL"} <= set(scripted)
