"""kombu's Redis transport with Courier's fixes, against a real redis-server."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Producer, Queue

from tests.utils.processes import RedisServer
from worker import kombu_fixes


def test_a_message_whose_unacked_write_fails_is_requeued(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write that records a fetched message as unacknowledged fails (Redis went away just
    after BRPOP): the message must go back to its list and be delivered again, not vanish."""
    kombu_fixes.apply()
    original = kombu_fixes._original_append
    failures = [redis.ConnectionError("Redis went away after BRPOP")]

    def append_failing_once(self: Any, message: Any, delivery_tag: str) -> None:
        if failures:
            raise failures.pop()
        original(self, message, delivery_tag)

    monkeypatch.setattr(kombu_fixes, "_original_append", append_failing_once)
    client = redis.Redis.from_url(own_redis.url)
    queue = Queue("limbo")
    received: list[tuple[Any, bool]] = []
    with Connection(own_redis.url) as connection:
        Producer(connection).publish({"n": 1}, routing_key="limbo", declare=[queue])
        with Consumer(
            connection,
            [queue],
            callbacks=[
                lambda body, message: received.append(
                    (body, message.delivery_info.get("redelivered", False))
                )
            ],
            accept=["json"],
        ):
            with pytest.raises(redis.ConnectionError):
                connection.drain_events(timeout=5)
            # Taken off the list, never recorded: without the fix it is gone for good.
            assert client.llen("limbo") == 0 and client.hlen("unacked") == 0
            assert not received
            connection.drain_events(timeout=5)
    client.close()
    assert received == [({"n": 1}, True)]
    assert not kombu_fixes._limbo
