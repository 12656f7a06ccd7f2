"""Courier's transport (``worker/transport``) against a real redis-server, through kombu's own
API: where a message is at each step, how the consumer waits, what kombu and Celery still see."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery, states
from celery.app.task import Context
from fastapi.testclient import TestClient
from kombu import Connection, Consumer, Producer, Queue
from kombu import message as kombu_message
from kombu import serialization as kombu_serialization
from kombu.exceptions import ContentDisallowed
from kombu.utils import json as kombu_json

from app.main import create_app
from tests.conftest import settings_from, wait_for_status
from tests.utils import messages
from tests.utils.processes import RedisServer, celery_worker, courier_env, wait_until
from tests.worker.stack import worker_stack
from worker.celery_config import TRANSPORT
from worker.core.dead_letters import DeadLetterScreen
from worker.core.names import (
    CELERY_RESULT_KEY,
    DEAD_LETTERS_KEY,
    DEFAULT_QUEUE,
    DELIVERY_TAG_HEADER,
    TASK_RECORD_KEY,
)
from worker.core.records import TaskRecords
from worker.core.redis_client import queue_commands
from worker.core.result_backend import CourierRedisBackend
from worker.transport import scripts
from worker.transport.stamp import START_CHECK_HEADER, StartStamp

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


def channel_of(connection: Connection) -> Any:
    """The connection's channel: Courier's, with kombu's Redis channel API (typed StdChannel)."""
    return connection.default_channel


def publish(url: str, *bodies: Any, priority: int | None = None) -> None:
    with courier_connection(url) as connection:
        producer = Producer(connection)
        for body in bodies:
            options: dict[str, Any] = {} if priority is None else {"priority": priority}
            producer.publish(body, routing_key=QUEUE.name, declare=[QUEUE], **options)


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
    received: list[tuple[Any, bool | None]] = []
    with (
        courier_connection(own_redis.url, visibility_timeout=1) as connection,
        Consumer(
            connection,
            [QUEUE],
            callbacks=[lambda body, m: received.append((body, m.delivery_info.get("redelivered")))],
            accept=["json"],
        ),
    ):
        channel_of(connection).qos.restore_visible(interval=1)  # what the timer runs
        connection.drain_events(timeout=10)
    assert received == [({"n": "lost reply"}, True)]


def test_a_sweep_lock_left_behind_holds_redelivery_back_seconds_not_minutes(
    own_redis: RedisServer, client: redis.Redis, tmp_path: Path
) -> None:
    """A worker killed mid-sweep leaves the sweep's lock behind, as a failover does that carries
    the lock's SET to the new primary but not its release (seen in CI: two tasks that ran read
    ``started`` after a planned failover, their abandoned messages never handed out again).
    Every other worker's sweep waits for the lock to expire: kombu's 300 s, so no abandoned
    message came back for five minutes. Here the next worker hands them out within seconds."""
    abandoned = 2000  # the sweep restoring them is still running when it is killed
    for _ in range(abandoned):
        client.lpush(DEFAULT_QUEUE, json.dumps(messages.envelope()))
    keys = ["unacked", "unacked_index", DEFAULT_QUEUE]
    # Taken a minute ago by fetches whose replies were lost.
    client.eval(scripts.FETCH, len(keys), *keys, abandoned, time.time() - 60, f"+{DEFAULT_QUEUE}")
    variables = courier_env(
        {"COURIER_REDIS_URL": own_redis.url, "COURIER_BROKER_VISIBILITY_TIMEOUT": "10"}
    )
    with celery_worker(variables, tmp_path / "sweeper.log", "sweeper", concurrency=1) as sweeper:
        wait_until(lambda: client.exists("unacked_mutex"), 60, "the first sweep", interval=0)
        sweeper.kill()
    left = client.hlen("unacked")
    assert left, "the sweep was over before the kill"
    assert client.exists("unacked_mutex"), "the lock was released"
    with celery_worker(variables, tmp_path / "next.log", "next", concurrency=1):
        # The sweep interval (1 s) plus the lock's life: restored, run and acknowledged.
        wait_until(
            lambda: client.hlen("unacked") + client.llen(DEFAULT_QUEUE) == 0,
            30,
            f"the {left} messages left in unacked to be handed out and run",
        )


def test_a_peek_answered_into_a_dead_connection_takes_nothing(
    own_redis: RedisServer, client: redis.Redis
) -> None:
    """How the consumer waits: BLMOVE of a list onto itself answers with its tail and leaves
    it in place, so an answer that never arrives costs nothing."""
    waiting: Any = redis.Redis.from_url(own_redis.url).connection_pool.get_connection()
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
        message = channel_of(connection).basic_get(QUEUE.name)
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


def _screened_task_message(client: redis.Redis, body: Any) -> None:
    """A task message whose body is kombu's JSON (tagged values included), onto the list."""
    encoded = base64.b64encode(kombu_json.dumps(body).encode()).decode()
    client.lpush(QUEUE.name, json.dumps(messages.envelope(raw_body=encoded)))


@pytest.mark.parametrize("accept", [["json"], ["pickle"]])
def test_the_screen_decodes_a_body_once_for_kombu_and_its_accept_check_still_holds(
    own_redis: RedisServer, client: redis.Redis, monkeypatch: pytest.MonkeyPatch, accept: list[str]
) -> None:
    # The screen decodes every task message's body to check it; the channel hands that body to
    # kombu's Message instead of letting it decode the same bytes again, which must change
    # nothing a consumer sees: the same value (kombu's JSON: a tagged datetime comes back as a
    # datetime), and a content type the consumer does not accept still refused.
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    body = [[1], {"when": datetime(2026, 12, 7, 21, 0, tzinfo=UTC)}, embed]
    _screened_task_message(client, body)
    kombu_decodes: list[Any] = []

    def counted_loads(*args: Any, **kwargs: Any) -> Any:
        kombu_decodes.append(args)
        return kombu_serialization.loads(*args, **kwargs)

    monkeypatch.setattr(kombu_message, "loads", counted_loads)
    received: list[Any] = []
    refused: list[Exception] = []

    def on_message(decoded: Any, message: Any) -> None:
        received.append(decoded)
        message.ack()

    def on_decode_error(message: Any, exc: Exception) -> None:
        refused.append(exc)
        message.ack()

    screen = DeadLetterScreen(max_count=10, max_bytes=10_000, tasks=lambda: {"noop"})
    with (
        courier_connection(own_redis.url, message_screen=screen) as connection,
        Consumer(
            connection, [QUEUE], callbacks=[on_message], accept=accept,
            on_decode_error=on_decode_error,
        ),
    ):  # fmt: skip
        connection.drain_events(timeout=10)
    if accept == ["json"]:
        assert received == [body]
        assert kombu_decodes == []  # the screen's decoding only
    else:
        assert received == []
        assert [type(exc) for exc in refused] == [ContentDisallowed]
    assert client.hlen(DEAD_LETTERS_KEY) == 0


def test_an_unreadable_message_taken_by_a_fetch_whose_reply_is_lost_comes_back_as_it_was(
    own_redis: RedisServer, client: redis.Redis
) -> None:
    client.lpush(QUEUE.name, b'{"not": "kombu\'s"')
    keys = ["unacked", "unacked_index", QUEUE.name]
    client.eval(scripts.FETCH, len(keys), *keys, 1, time.time() - 60, f"+{QUEUE.name}")
    (tag,) = client.hkeys("unacked")
    assert isinstance(tag, bytes) and tag.startswith(b"courier-undecodable-")
    with courier_connection(own_redis.url, visibility_timeout=1) as connection:
        channel_of(connection).qos.restore_visible(interval=1)
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
        # Prefetch 2: the reserved task waits in the worker, so no fetch stamped it started.
        assert api.get(f"/v1/tasks/{reserved}").json()["status"] == "queued"
        # Addressed to the one worker, an inspect returns with its reply instead of waiting out
        # the timeout for any other worker's.
        node = f"inspected@{socket.gethostname()}"
        inspect = ("inspect", "--timeout", "10", "--destination", node, "--json")
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
        channel = channel_of(connection)
        taken = [channel.basic_get(QUEUE.name) for _ in range(2)]
        assert client.hlen("unacked") == 2
        for message in taken:
            assert message is not None
            message.ack()
    assert client.hlen("unacked") == 0
    assert client.zcard("unacked_index") == 0


# --- the start stamp at fetch (worker/transport/stamp.py) ---

STAMP = StartStamp(hostname="stamper@host", pid=os.getpid(), ttl=300, tasks={"noop"})


def publish_task(url: str, task_id: str, name: str = "noop", **headers: Any) -> None:
    """A Celery protocol 2 message, as any producer writes it."""
    with courier_connection(url) as connection:
        Producer(connection).publish(
            [[], {}, {}],
            routing_key=QUEUE.name,
            declare=[QUEUE],
            headers={"task": name, "id": task_id, "retries": 0, "eta": None, **headers},
        )


def consume_one(url: str, stamp: StartStamp | None = STAMP) -> Any:
    received: list[Any] = []
    with (
        courier_connection(url, start_stamp=lambda: stamp) as connection,
        Consumer(connection, [QUEUE], callbacks=[lambda b, m: received.append(m)], accept=["json"]),
    ):
        connection.drain_events(timeout=10)
        received[0].ack()
    return received[0]


def test_the_fetch_stamps_a_task_to_run_now_as_the_pool_child_would(
    own_redis: RedisServer, client: redis.Redis
) -> None:
    """The record (created: another producer's task), start time, attempt count and Celery's
    STARTED state are written by the script that takes the message, and its check rides back
    in a header, which Celery copies into the task's request."""
    task_id = str(uuid.uuid4())
    publish_task(own_redis.url, task_id)
    before = time.time()
    message = consume_one(own_redis.url)
    assert message.headers[START_CHECK_HEADER] == "started"
    record, stored = TaskRecords(client, STAMP.ttl).get_with_result(task_id)
    assert record is not None and (record.name, record.queue, record.executions) == (
        "noop", QUEUE.name, 1,
    )  # fmt: skip
    assert record.started_at is not None and before - 0.5 < record.started_at <= time.time()
    assert 0 < client.ttl(CELERY_RESULT_KEY.format(task_id=task_id)) <= STAMP.ttl
    assert 0 < client.ttl(TASK_RECORD_KEY.format(task_id=task_id)) <= STAMP.ttl
    # What the child's stamp stores (Celery's backend, result_extended), but for the body's
    # args and kwargs, which the script does not decode.
    app = Celery("stamped", backend=own_redis.url, result_extended=True)
    request = Context(
        id=task_id, task="noop", args=None, kwargs=None, hostname=STAMP.hostname, retries=0,
        delivery_info={"routing_key": QUEUE.name},
    )  # fmt: skip
    expected = json.loads(CourierRedisBackend(app=app).started_meta(task_id, request))
    app.close()
    assert stored is not None and json.loads(stored) == expected


def test_the_fetch_check_says_revoked_or_finished_and_never_stores_over_a_final_state(
    own_redis: RedisServer, client: redis.Redis
) -> None:
    records = TaskRecords(client, STAMP.ttl)
    revoked, finished = str(uuid.uuid4()), str(uuid.uuid4())
    for task_id in (revoked, finished):
        pipe = client.pipeline(transaction=True)
        queue_commands(pipe, records.calls.create_commands(task_id, "noop", QUEUE.name))
        pipe.execute()
    records.mark_revoked(revoked)
    done = json.dumps({"status": states.SUCCESS, "result": 1, "task_id": finished})
    client.set(CELERY_RESULT_KEY.format(task_id=finished), done)
    publish_task(own_redis.url, revoked)
    assert consume_one(own_redis.url).headers[START_CHECK_HEADER] == "revoked"
    publish_task(own_redis.url, finished)
    assert consume_one(own_redis.url).headers[START_CHECK_HEADER] == "finished"
    assert client.get(CELERY_RESULT_KEY.format(task_id=finished)) == done.encode()


def test_a_task_enqueued_after_the_fetch_read_its_clock_never_reads_started_before_it(
    own_redis: RedisServer, client: redis.Redis
) -> None:
    """The fetch's start time is the worker's clock, read before its request reached Redis; a
    task enqueued meanwhile (here: by a producer whose clock runs ahead) starts at its enqueue
    time, not before it."""
    records = TaskRecords(client, STAMP.ttl)
    task_id = str(uuid.uuid4())
    pipe = client.pipeline(transaction=True)
    queue_commands(pipe, records.calls.create_commands(task_id, "noop", QUEUE.name))
    pipe.execute()
    enqueued_at = time.time() + 30
    client.hset(TASK_RECORD_KEY.format(task_id=task_id), "enqueued_at", enqueued_at)
    publish_task(own_redis.url, task_id)
    assert consume_one(own_redis.url).headers[START_CHECK_HEADER] == "started"
    record, _ = records.get_with_result(task_id)
    assert record is not None and record.started_at == record.enqueued_at == enqueued_at


@pytest.mark.parametrize(
    ("case", "headers", "stamp"),
    [
        ("a countdown task", {"eta": "2030-01-01T00:00:00+00:00"}, STAMP),
        ("an expiring task", {"expires": "2030-01-01T00:00:00+00:00"}, STAMP),
        ("a task the stamp does not name", {"task": "other"}, STAMP),
        ("a worker that prefetches", {}, None),
    ],
)
def test_the_fetch_leaves_the_stamp_to_the_pool_child_for(
    own_redis: RedisServer,
    client: redis.Redis,
    case: str,
    headers: dict[str, Any],
    stamp: StartStamp | None,
) -> None:
    task_id = str(uuid.uuid4())
    name = headers.pop("task", "noop")
    publish_task(own_redis.url, task_id, name, **headers)
    message = consume_one(own_redis.url, stamp)
    assert START_CHECK_HEADER not in message.headers, case
    assert client.exists(CELERY_RESULT_KEY.format(task_id=task_id)) == 0, case
    assert client.exists(TASK_RECORD_KEY.format(task_id=task_id)) == 0, case


@pytest.mark.parametrize("stamp", [STAMP, None])
def test_a_start_check_header_sent_by_a_producer_never_reaches_the_task(
    own_redis: RedisServer, stamp: StartStamp | None
) -> None:
    """A forged "finished" would make the worker skip the task as a duplicate."""
    publish_task(own_redis.url, str(uuid.uuid4()), **{START_CHECK_HEADER: "finished"})
    expected = "started" if stamp is not None else None
    assert consume_one(own_redis.url, stamp).headers.get(START_CHECK_HEADER) == expected


def test_a_task_stamped_at_fetch_costs_its_pool_child_one_round_trip_not_two(
    tmp_path: Path,
) -> None:
    """Counted by Redis (INFO commandstats) over tasks queued behind a busy pool process: per
    task one FETCH (which stamps it) and one result write; the child's own stamp script (and
    its HINCRBY) never runs."""
    tasks = 20
    with worker_stack(tmp_path, "stamped") as stack:
        blocker = stack.api.post("/v1/tasks/noop", json={"sleep_seconds": 2}).json()["id"]
        wait_for_status(stack.api, blocker, {"started"})
        ids = [stack.api.post("/v1/tasks/noop", json={}).json()["id"] for _ in range(tasks)]
        stack.redis.config_resetstat()
        result_keys = [CELERY_RESULT_KEY.format(task_id=task_id) for task_id in ids]
        wait_until(
            lambda: all(
                json.loads(stack.redis.get(key) or b"{}").get("status") == states.SUCCESS
                for key in result_keys
            ),
            60,
            "the queued tasks to succeed",
            0.5,
        )
        calls = {k: int(v["calls"]) for k, v in stack.redis.info("commandstats").items()}
        records = TaskRecords(stack.redis, 300)
        for task_id in ids:
            record, _ = records.get_with_result(task_id)
            assert record is not None and record.started_at is not None
            assert record.executions == 1
    assert "cmdstat_hincrby" not in calls, calls
    # FETCH and the result per task, plus the blocker's result and a few empty fetches (the
    # pool's child takes its next task after the fetch that found it); the child's own stamp
    # made it 3 per task and more.
    assert calls["cmdstat_evalsha"] <= 2.5 * tasks, calls


def test_a_task_revoked_while_queued_is_skipped_on_the_fetch_check_alone(tmp_path: Path) -> None:
    """The revoked flag set without the broadcast (what a worker started after the cancel
    sees): the fetch reads it and stamps nothing (no start time, no attempt, no STARTED, which
    a reader could see before REVOKED), and the pool child, which makes no round trip of its
    own, skips the task on that check and stores REVOKED."""
    with worker_stack(tmp_path, "unbroadcast") as stack:
        blocker = stack.api.post("/v1/tasks/noop", json={"sleep_seconds": 1}).json()["id"]
        wait_for_status(stack.api, blocker, {"started"})
        queued = stack.api.post("/v1/tasks/noop", json={"echo": "never"}).json()["id"]
        records = TaskRecords(stack.redis, 300)
        assert records.mark_revoked(queued)
        assert wait_for_status(stack.api, blocker)["status"] == "succeeded"
        stored = wait_until(
            lambda: stack.redis.get(CELERY_RESULT_KEY.format(task_id=queued)), 20, "a state"
        )
        done = wait_for_status(stack.api, queued)
        record, _ = records.get_with_result(queued)
    assert (done["status"], done["result"]) == ("revoked", None)
    assert isinstance(stored, bytes) and json.loads(stored)["status"] == states.REVOKED
    assert record is not None and (record.started_at, record.executions) == (None, 0)


# --- acknowledgements on the fetches' own connection (Sentinel mode) ---


@contextlib.contextmanager
def consuming(
    url: str, messages: list[Any], prefetch_count: int | None = None, **options: Any
) -> Iterator[Connection]:
    """A connection consuming ``QUEUE``, each message appended to ``messages`` unacknowledged."""
    with (
        courier_connection(url, **options) as connection,
        Consumer(
            connection,
            [QUEUE],
            callbacks=[lambda body, message: messages.append(message)],
            accept=["json"],
            prefetch_count=prefetch_count,
        ),
    ):
        yield connection


@pytest.mark.parametrize("own", [True, False])
def test_acknowledgements_stay_on_the_connection_that_fetched(
    own_redis: RedisServer, client: redis.Redis, own: bool
) -> None:
    """With ``acks_on_own_connection`` (the Sentinel channel's), an acknowledgement goes on the
    connection whose fetch delivered the message, and once that connection is gone it is not
    sent through a new one (which, after a failover, may reach another server than the one
    holding the task's result): the message stays in unacked for the visibility timeout.
    Without it, a pooled connection sends it, as before."""
    publish(own_redis.url, 1, 2)
    messages: list[Any] = []
    with consuming(
        own_redis.url, messages, acks_on_own_connection=own, prefetch_count=1
    ) as connection:
        channel = channel_of(connection)
        connection.drain_events(timeout=10)
        messages[0].ack()
        with contextlib.suppress(TimeoutError, OSError):
            connection.drain_events(timeout=1)  # its poll start: a fetch carries the ack
        assert len(messages) == 2 and client.hlen("unacked") == 1
        with contextlib.suppress(TimeoutError, OSError):
            connection.drain_events(timeout=0.5)  # nothing to fetch: fetch reply read, idle
        messages[1].ack()
        channel.client.connection.disconnect()  # the fetches' connection is gone
        channel.flush_acks()
        assert client.hlen("unacked") == (1 if own else 0)


def test_a_lone_acknowledgement_on_the_fetches_own_connection_is_applied(
    own_redis: RedisServer, client: redis.Redis
) -> None:
    publish(own_redis.url, 1)
    messages: list[Any] = []
    with consuming(
        own_redis.url, messages, acks_on_own_connection=True, prefetch_count=1
    ) as connection:
        connection.drain_events(timeout=10)
        client.config_resetstat()
        messages[0].ack()
        with contextlib.suppress(TimeoutError, OSError):
            connection.drain_events(timeout=0.5)  # poll start: a fetch carries it, or ACK
        own = channel_of(connection).client.connection
        assert own is not None and own._sock is not None
        assert (client.hlen("unacked"), client.zcard("unacked_index")) == (0, 0)
    assert client.info("commandstats")["cmdstat_hdel"]["calls"] == 1


@pytest.mark.parametrize("own", [True, False])
def test_with_sentinel_a_fetched_task_carries_its_delivery_tag_and_no_producer_sets_it(
    own_redis: RedisServer, own: bool
) -> None:
    """``courier_delivery_tag``: the tag of the fetch that delivered the message (Sentinel's
    channel, for the result backend to store where the delivery is recorded); whatever a
    producer wrote under that name is dropped."""
    with courier_connection(own_redis.url) as connection:
        Producer(connection).publish(
            {"n": 1},
            routing_key=QUEUE.name,
            declare=[QUEUE],
            headers={DELIVERY_TAG_HEADER: "forged", "kept": "yes"},
        )
    messages: list[Any] = []
    with consuming(own_redis.url, messages, acks_on_own_connection=own) as connection:
        connection.drain_events(timeout=10)
        (message,) = messages
        assert message.headers["kept"] == "yes"
        expected = message.delivery_tag if own else None
        assert message.headers.get(DELIVERY_TAG_HEADER) == expected
        message.ack()
