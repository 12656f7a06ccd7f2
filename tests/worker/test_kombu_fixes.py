"""kombu's Redis transport with Courier's fixes, against a real redis-server."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Producer, Queue
from kombu.transport import redis as kombu_redis

from tests.utils.processes import RedisServer
from worker import kombu_fixes


@contextlib.contextmanager
def fixes_applied() -> Iterator[None]:
    """``kombu_fixes.apply()``, then kombu's transport as it was: the fixes patch kombu's
    classes for the whole process, which the other tests must see as they were."""
    classes = (kombu_redis.Channel, kombu_redis.QoS)
    before = [dict(vars(cls)) for cls in classes]
    kombu_fixes.apply()
    try:
        yield
    finally:
        for cls, attributes in zip(classes, before, strict=True):
            for name in set(vars(cls)) - set(attributes):
                delattr(cls, name)
            for name, value in attributes.items():
                if vars(cls).get(name) is not value:
                    setattr(cls, name, value)


@pytest.fixture(name="fixes_applied")
def fixes_applied_fixture() -> Iterator[None]:
    with fixes_applied():
        yield


def test_the_fixes_are_undone_after_use() -> None:
    append = kombu_redis.QoS.append
    with fixes_applied():
        assert kombu_redis.QoS.append is kombu_fixes._append
    assert kombu_redis.QoS.append is append


@pytest.mark.usefixtures("fixes_applied")
def test_a_message_whose_unacked_write_fails_is_requeued(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write that records a fetched message as unacknowledged fails (Redis went away just
    after BRPOP): the message must go back to its list and be delivered again, not vanish."""
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
