"""Redis error replies as API answers: a refusal is a 503 that names it, anything else a JSON 500.

Before, any error reply (a full or read-only Redis among them) escaped as a text/plain 500.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import settings_from
from tests.utils.processes import RedisServer, free_port
from worker.core.names import TASK_RECORD_KEY


@pytest.fixture
def api(own_redis: RedisServer) -> Iterator[TestClient]:
    settings = settings_from({"COURIER_REDIS_URL": own_redis.url})
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_a_read_only_redis_answers_503_naming_it(api: TestClient, own_redis: RedisServer) -> None:
    with redis.Redis.from_url(own_redis.url) as client:
        client.replicaof("127.0.0.1", free_port())  # a failover left us on a replica
        submit = api.post("/v1/tasks/noop", json={"echo": 1})
        keyed = api.post("/v1/tasks/noop", json={"echo": 1}, headers={"Idempotency-Key": "ro"})
        register = api.post("/users/register", params={"username": "ro", "email": "r@o.example"})
        client.replicaof("NO", "ONE")
    for response in (submit, keyed, register):
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "1"
        assert "read-only replica" in response.json()["detail"]
    assert "the task was not stored" in submit.json()["detail"]
    assert "the task was not stored" in keyed.json()["detail"]
    assert api.post("/v1/tasks/noop", json={"echo": 2}).status_code == 202


def test_an_unexpected_error_reply_is_a_json_500(api: TestClient, own_redis: RedisServer) -> None:
    task_id = api.post("/v1/tasks/noop", json={"echo": 1}).json()["id"]
    with redis.Redis.from_url(own_redis.url) as client:
        key = TASK_RECORD_KEY.format(task_id=task_id)
        client.delete(key)
        client.lpush(key, "not a hash")  # WRONGTYPE for the status read: a bug, not an outage
    response = api.get(f"/v1/tasks/{task_id}")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert "WRONGTYPE" in response.json()["detail"]
