"""Courier's transport (``worker/transport``) against a real redis-server, through kombu's own
API: where a message is at each step, how the consumer waits, what kombu and Celery still see."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from kombu import Connection, Consumer, Producer, Queue

from app.main import create_app
from tests.conftest import settings_from, wait_for_status
from tests.utils.processes import RedisServer, celery_worker, courier_env, wait_until
from worker.celery_config import TRANSPORT
from worker.core.names import DEFAULT_QUEUE
from worker.transport import scripts

QUEUE = Queue("work")


@contextlib.contextmanager
def courier_connection(url: str, **options: Any) -> Iterator[Connection]:
    with Connection(url, transport=TRANSPORT, transport_options=options) as connection:
        yield connection


@pytest.fixture
def client(own_redis: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(own_redis.url)
    yield client
    client.close()


def publish(url: str, *bodies: Any, priority: int | None = None) -> None:
    with courier_connection(url) as connection:
        producer = Producer(connection)
        for body in bodies:
            producer.publish(body, routing_key=QUEUE.name, declare=[QUEUE], priority=priority)


def test_a_message_leaves_its_list_already_recorded_as_unacknowledged(
    own_redis: RedisServer, client: redis.Redis
) -> None:
    publish(own_redis.url, {"n": 1})
    seen: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        entry = client.hget("unacked", message.delivery_tag)
        seen.append((client.llen(QUEUE.name), json.loads(entry or b"null")))
        seen.append(client.zscore("unacked_index", message.delivery_tag) is not None)
        message.ack()

    with (
        courier_connection(own_redis.url) as connection,
        Consumer(connection, [QUEUE], callbacks=[on_message], accept=["json"]),
    ):
        connection.drain_events(timeout=10)
    (length, (raw, exchange, routing_key)), indexed = seen
    # kombu's own format: kombu's sweep, celery inspect and queue_stats read it unchanged.
    assert (length, exchange, routing_key, indexed) == (0, "", QUEUE.name, True)
    assert raw["properties"]["delivery_tag"]
    assert (client.hlen("unacked"), client.zcard("unacked_index")) == (0, 0)


def test_a_fetch_whose_reply_is_lost_leaves_the_message_in_unacked_for_the_sweep(
    own_redis: RedisServer, client: redis.Redis
) -> None:
    """The reply to a fetch goes into a dead link: the message is not delivered, but it is in
    unacked, and kombu's restore sweep brings it back after the visibility timeout."""
    publish(own_redis.url, {"n": "lost reply"})
    keys = ["unacked", "unacked_index", QUEUE.name]
    client.eval(scripts.FETCH, len(keys), *keys, 1, time.time() - 60, f"+{QUEUE.name}")
    assert (client.llen(QUEUE.name), client.hlen("unacked")) == (0, 1)
    received: list[tuple[Any, bool]] = []
    with (
        courier_connection(own_redis.url, visibility_timeout=1) as connection,
        Consumer(
            connection,
            [QUEUE],
            callbacks=[lambda body, m: received.append((body, m.delivery_info.get("redelivered")))],
            accept=["json"],
        ),
    ):
        connection.default_channel.qos.restore_visible(interval=1)  # what the timer runs
        connection.drain_events(timeout=10)
    assert received == [({"n": "lost reply"}, True)]


def test_a_peek_answered_into_a_dead_connection_takes_nothing(
    own_redis: RedisServer, client: redis.Redis
) -> None:
    """How the consumer waits: BLMOVE of a list onto itself answers with its tail and leaves
    it in place, so an answer that never arrives costs nothing."""
    waiting = redis.Redis.from_url(own_redis.url).connection_pool.get_connection()
    waiting.send_command("BLMOVE", QUEUE.name, QUEUE.name, "RIGHT", "RIGHT", 30)
    wait_until(lambda: client.info("clients")["blocked_clients"] == 1, 10, "the peek to block")
    client.lpush(QUEUE.name, b"a message")
    wait_until(lambda: client.info("clients")["blocked_clients"] == 0, 10, "the peek's answer")
    waiting.disconnect()  # the answer is never read
    assert client.lrange(QUEUE.name, 0, -1) == [b"a message"]


def test_an_idle_consumer_blocks_on_every_priority_list_and_wakes_for_any(
    own_redis: RedisServer, client: redis.Redis
) -> None:
    """No polling: each peek blocks 60 s, yet a message on a priority sub-list is delivered
    long before the drain's 50 s timeout."""
    received: list[Any] = []
    with (
        courier_connection(own_redis.url, wait_timeout=60) as connection,
        Consumer(connection, [QUEUE], callbacks=[lambda b, m: received.append(b)], accept=["json"]),
    ):
        drain = threading.Thread(target=connection.drain_events, kwargs={"timeout": 50})
        drain.start()
        try:
            wait_until(lambda: client.info("clients")["blocked_clients"] == 4, 20, "4 peeks")
            publish(own_redis.url, {"urgent": False}, priority=9)
        finally:
            drain.join(60)
    assert received == [{"urgent": False}]


def test_one_fetch_takes_what_the_qos_allows_highest_priority_first(
    own_redis: RedisServer,
) -> None:
    for n, priority in enumerate([9, 0, 6, 0, 3]):
        publish(own_redis.url, n, priority=priority)
    batches: list[list[int]] = []
    messages: list[Any] = []
    with (
        courier_connection(own_redis.url) as connection,
        Consumer(
            connection,
            [QUEUE],
            callbacks=[lambda body, message: messages.append((body, message))],
            accept=["json"],
            prefetch_count=3,
        ),
    ):
        for _ in range(2):
            connection.drain_events(timeout=10)  # returns after one fetch's deliveries
            batches.append([body for body, _ in messages])
            for _, message in messages:
                message.ack()
            messages.clear()
    assert batches == [[1, 3, 4], [2, 0]]


def test_a_consumer_without_acknowledgements_leaves_nothing_in_unacked(
    own_redis: RedisServer, client: redis.Redis
) -> None:
    publish(own_redis.url, {"reply": "pong"})
    received: list[Any] = []
    with (
        courier_connection(own_redis.url) as connection,
        Consumer(
            connection,
            [QUEUE],
            callbacks=[lambda b, m: received.append(b)],
            accept=["json"],
            no_ack=True,
        ),
    ):
        connection.drain_events(timeout=10)
    assert received == [{"reply": "pong"}]
    assert client.hlen("unacked") == 0


def test_an_acknowledgement_reaching_a_closed_channel_is_a_connection_error(
    own_redis: RedisServer,
) -> None:
    """After a reconnect, a task that finished acknowledges on the old, closed channel: kombu
    raised AttributeError there, which Celery takes for fatal (the worker hung)."""
    publish(own_redis.url, {"finished": "during a reconnect"})
    with courier_connection(own_redis.url) as connection:
        message = connection.default_channel.basic_get(QUEUE.name)
        assert message is not None
        errors = connection.connection_errors
    with pytest.raises(errors) as raised:
        message.ack()
    assert isinstance(raised.value, redis.ConnectionError)


def test_a_message_kombu_cannot_read_neither_stops_the_consumer_nor_vanishes_unseen(
    own_redis: RedisServer, client: redis.Redis
) -> None:
    client.lpush(QUEUE.name, b"not json at all")
    publish(own_redis.url, {"behind": "it"})
    received: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        received.append(body)
        message.ack()

    with (
        courier_connection(own_redis.url) as connection,
        Consumer(connection, [QUEUE], callbacks=[on_message], accept=["json"]),
    ):
        connection.drain_events(timeout=10)
    assert received == [{"behind": "it"}]
    assert (client.llen(QUEUE.name), client.hlen("unacked")) == (0, 0)


def test_an_unreadable_message_taken_by_a_fetch_whose_reply_is_lost_comes_back_as_it_was(
    own_redis: RedisServer, client: redis.Redis
) -> None:
    client.lpush(QUEUE.name, b'{"not": "kombu\'s"')
    keys = ["unacked", "unacked_index", QUEUE.name]
    client.eval(scripts.FETCH, len(keys), *keys, 1, time.time() - 60, f"+{QUEUE.name}")
    (tag,) = client.hkeys("unacked")
    assert tag.startswith(b"courier-undecodable-")
    with courier_connection(own_redis.url, visibility_timeout=1) as connection:
        connection.default_channel.qos.restore_visible(interval=1)
    assert client.lrange(QUEUE.name, 0, -1) == [b'{"not": "kombu\'s"']
    assert client.hlen("unacked") == 0


def celery_command(env: dict[str, str], *args: str) -> str:
    command = [sys.executable, "-m", "celery", "-A", "worker.celery_app", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_celery_inspect_and_purge_work_against_a_worker_on_it(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    fields = {"COURIER_REDIS_URL": own_redis.url, "COURIER_WORKER_PREFETCH_MULTIPLIER": "2"}
    variables = courier_env(fields)
    with contextlib.ExitStack() as cleanup:
        worker = celery_worker(variables, tmp_path / "worker.log", "inspected", concurrency=1)
        cleanup.callback(worker.kill)  # its tasks would run for minutes
        api = cleanup.enter_context(TestClient(create_app(settings_from(fields))))

        def submit() -> str:
            response = api.post("/v1/tasks/noop", json={"sleep_seconds": 600})
            assert response.status_code == 202, response.text
            return str(response.json()["id"])

        running, reserved = submit(), submit()
        wait_for_status(api, running, {"started"}, timeout=60)
        inspect = ("inspect", "--timeout", "10", "--json")
        assert running in celery_command(variables, *inspect, "active")
        assert reserved in celery_command(variables, *inspect, "reserved")
        assert "pong" in celery_command(variables, *inspect, "ping")
        # What Flower asks for: the transport options travel as JSON (a screen object did not).
        stats = json.loads(celery_command(variables, *inspect, "stats"))
        options = next(iter(stats.values()))["broker"]["transport_options"]
        assert options["message_screen"] == "worker.celery_config:screen_message"
        conf = json.loads(celery_command(variables, *inspect, "conf"))
        assert next(iter(conf.values()))["broker_transport"] == "worker.transport:Transport"
        for _ in range(3):
            submit()  # no credit left: they stay in the list
        assert "Purged 3 messages" in celery_command(variables, "purge", "-f")
        client = cleanup.enter_context(contextlib.closing(redis.Redis.from_url(own_redis.url)))
        assert client.llen(DEFAULT_QUEUE) == 0
        assert client.hlen("unacked") == 2  # the running and the reserved task, still held


def test_acknowledgements_of_one_tick_ride_in_the_next_fetch_in_one_script_call(
    own_redis: RedisServer, client: redis.Redis
) -> None:
    publish(own_redis.url, 1, 2, 3, 4, 5)
    messages: list[Any] = []
    with (
        courier_connection(own_redis.url) as connection,
        Consumer(
            connection,
            [QUEUE],
            callbacks=[lambda body, message: messages.append(message)],
            accept=["json"],
            prefetch_count=3,
        ),
    ):
        connection.drain_events(timeout=10)
        assert len(messages) == 3
        for message in messages:
            message.ack()
        client.config_resetstat()
        connection.drain_events(timeout=10)  # its poll start sends the fetch, acks inside
        stats = client.info("commandstats")
        assert len(messages) == 5
        assert sorted(client.hkeys("unacked")) == sorted(
            m.delivery_tag.encode() for m in messages[3:]
        )
    assert stats["cmdstat_evalsha"]["calls"] == 1  # one fetch, no ACK call of its own
    assert stats["cmdstat_hdel"]["calls"] == 1  # three tags, one HDEL


def test_acknowledgements_not_yet_sent_leave_when_the_channel_closes(
    own_redis: RedisServer, client: redis.Redis
) -> None:
    publish(own_redis.url, 1, 2)
    with courier_connection(own_redis.url) as connection:
        channel = connection.default_channel
        taken = [channel.basic_get(QUEUE.name) for _ in range(2)]
        assert client.hlen("unacked") == 2
        for message in taken:
            assert message is not None
            message.ack()
    assert client.hlen("unacked") == 0
    assert client.zcard("unacked_index") == 0
