"""The inline pool's final states, written by the call that carries the task's acknowledgement
(``worker/core/result_carry.py``): one script call per task, the same states and PUBLISH as the
result backend's own script, and nothing lost when that call fails. The channel's side is tested
on a real redis-server with kombu's consumer, the whole path with real workers."""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery, states

from tests.conftest import wait_for_status
from tests.utils.processes import RedisServer, wait_until
from tests.utils.redis_link import RedisLink, linked_stack
from tests.worker.stack import worker_stack
from tests.worker.test_transport import QUEUE, channel_of, consuming, publish
from worker.core import result_carry
from worker.core.names import CELERY_RESULT_KEY, DEFAULT_QUEUE, NOOP_TASK
from worker.core.result_carry import CarriedState
from worker.transport import scripts

TASKS = 200
# In the value of a SUCCESS the result backend stores (kombu's JSON): no other write has it.
SUCCESS_WRITE = b'"status": "SUCCESS"'


def result_states(client: redis.Redis, ids: list[str]) -> list[str | None]:
    values = client.mget([CELERY_RESULT_KEY.format(task_id=task_id) for task_id in ids])
    return [json.loads(value)["status"] if value else None for value in values]


# --- the channel's side: kombu's consumer on Courier's transport, carry_results on ---


def success(task_id: str, result: object = None) -> str:
    return json.dumps({"status": states.SUCCESS, "result": result, "task_id": task_id})


@contextlib.contextmanager
def one_delivered(url: str) -> Iterator[tuple[Any, Any, list[Any]]]:
    """A consumer with one of two queued messages delivered, not yet acknowledged: the
    connection, its channel and the messages delivered so far."""
    publish(url, 1, 2)
    messages: list[Any] = []
    with consuming(url, messages, prefetch_count=1, carry_results=True) as connection:
        connection.drain_events(timeout=10)
        assert len(messages) == 1
        yield connection, channel_of(connection), messages


def offered(channel: Any, message: Any, value: str, again: list[str], where_delivered: bool = False
            ) -> CarriedState:  # fmt: skip
    state = CarriedState(
        key=CELERY_RESULT_KEY.format(task_id="carried"),
        value=value,
        ttl=300,
        delivery_tag=message.delivery_tag,
        where_delivered=where_delivered,
        identity=channel.carried.identity,
        store_again=lambda: again.append(value),
    )
    assert result_carry.offer(state)
    return state


def test_a_carried_state_is_written_and_published_by_the_fetch_carrying_its_ack(
    own_redis: RedisServer,
) -> None:
    client = redis.Redis.from_url(own_redis.url)
    key = CELERY_RESULT_KEY.format(task_id="carried")
    again: list[str] = []
    with one_delivered(own_redis.url) as (connection, channel, messages), client.pubsub() as sub:
        sub.subscribe(key)
        offered(channel, messages[0], success("carried", 7), again)
        messages[0].ack()
        client.config_resetstat()
        connection.drain_events(timeout=10)  # its poll start sends the fetch, carrying both
        stats = client.info("commandstats")
        published = wait_until(lambda: sub.get_message(True, timeout=1), 10, "the PUBLISH")
        assert len(messages) == 2
        assert client.hkeys("unacked") == [messages[1].delivery_tag.encode()]
    stored = client.get(key)
    assert stored is not None and json.loads(stored)["result"] == 7
    assert published["data"] == stored
    assert 0 < client.ttl(key) <= 300
    assert stats["cmdstat_evalsha"]["calls"] == 1, stats  # the fetch alone
    assert again == []
    client.close()


def test_a_carried_state_never_replaces_a_finished_one(own_redis: RedisServer) -> None:
    client = redis.Redis.from_url(own_redis.url)
    key = CELERY_RESULT_KEY.format(task_id="carried")
    first = json.dumps({"status": states.FAILURE, "result": None, "task_id": "carried"})
    client.set(key, first)
    with one_delivered(own_redis.url) as (connection, channel, messages):
        offered(channel, messages[0], success("carried"), [])
        messages[0].ack()
        connection.drain_events(timeout=10)
    assert client.get(key) == first.encode()
    client.close()


def test_a_state_whose_delivery_is_not_recorded_there_is_stored_again_not_carried(
    own_redis: RedisServer,
) -> None:
    """Sentinel's rule (``where_delivered``): the script leaves it, the backend's normal path
    stores it (on a new connection, as ``CourierSentinelBackend`` does)."""
    client = redis.Redis.from_url(own_redis.url)
    again: list[str] = []
    with one_delivered(own_redis.url) as (connection, channel, messages):
        client.hdel("unacked", messages[0].delivery_tag)  # as on a server that lost it
        offered(channel, messages[0], success("carried"), again, where_delivered=True)
        messages[0].ack()
        connection.drain_events(timeout=10)
    assert client.get(CELERY_RESULT_KEY.format(task_id="carried")) is None
    assert again == [success("carried")]
    client.close()


def test_states_of_a_carrying_call_whose_connection_died_are_stored_again_then_acked(
    own_redis: RedisServer,
) -> None:
    """The fetch carrying a state and its acknowledgement meets a killed connection: the
    state goes through the backend's normal path, then the acknowledgement again."""
    client = redis.Redis.from_url(own_redis.url)
    again: list[str] = []
    with one_delivered(own_redis.url) as (connection, channel, messages):
        offered(channel, messages[0], success("carried"), again)
        messages[0].ack()
        client.client_kill_filter(_type="normal", skipme=True)
        with contextlib.suppress(*connection.connection_errors):
            connection.drain_events(timeout=10)
        assert again == [success("carried")]
        assert not client.hexists("unacked", messages[0].delivery_tag)
    client.close()


def test_a_state_that_could_not_be_stored_never_has_its_acknowledgement_sent(
    own_redis: RedisServer,
) -> None:
    """The fetch's connection is lost with a state carried and its acknowledgement made; the
    backend's own path cannot store the state either (Redis away through all its retries), so
    the message goes back to its queue. Another worker takes it, recording it in ``unacked``
    under the same delivery tag. The stale acknowledgement, sent by this channel's next call,
    removed that record: the task then had no state, no message and no delivery (it would read
    ``started`` for good). Found by review; the acknowledgement is now withdrawn."""
    client = redis.Redis.from_url(own_redis.url)
    with one_delivered(own_redis.url) as (connection, channel, messages):
        tag = messages[0].delivery_tag

        def refused() -> None:
            raise redis.ConnectionError("Redis away through the backend's retries")

        state = CarriedState(
            key=CELERY_RESULT_KEY.format(task_id="carried"),
            value=success("carried"),
            ttl=300,
            delivery_tag=tag,
            where_delivered=False,
            identity=channel.carried.identity,
            store_again=refused,
        )
        assert result_carry.offer(state)
        messages[0].ack()  # the task's acknowledgement, made after its state was offered
        channel.client.connection.disconnect()  # the fetch's connection lost
        assert not client.hexists("unacked", tag)  # its message went back to the queue
        keys = ["unacked", "unacked_index", QUEUE.name]  # another worker's fetch takes it
        client.eval(scripts.FETCH, len(keys), *keys, 10, time.time(), f"+{QUEUE.name}")
        assert client.hexists("unacked", tag)
        with contextlib.suppress(TimeoutError, *connection.connection_errors):
            connection.drain_events(timeout=2)  # this channel's next call
        assert client.hexists("unacked", tag), "the other worker's delivery was acknowledged"
    client.close()


# --- the whole path: real workers ---


def test_an_inline_workers_task_costs_one_script_call_with_its_result_in_it(
    tmp_path: Path,
) -> None:
    """Counted by Redis (INFO commandstats) over tasks queued behind a running one: one
    EVALSHA per task (the fetch, carrying the previous task's acknowledgement and SUCCESS),
    where the result backend's own script made it two; every state is stored and published
    as before, and read back by the API."""
    with worker_stack(tmp_path, "carry", pool="inline") as stack:
        blocker = stack.api.post("/v1/tasks/noop", json={"sleep_seconds": 3}).json()["id"]
        wait_for_status(stack.api, blocker, {"started"})
        ids = [
            stack.api.post("/v1/tasks/noop", json={"echo": i}).json()["id"] for i in range(TASKS)
        ]
        stack.redis.config_resetstat()
        wait_until(
            lambda: all(state == states.SUCCESS for state in result_states(stack.redis, ids)),
            60,
            "the queued tasks to succeed",
            0.25,
        )
        calls = {k: int(v["calls"]) for k, v in stack.redis.info("commandstats").items()}
        read = [stack.api.get(f"/v1/tasks/{task_id}").json() for task_id in ids]
        assert not stack.logged_errors()
    assert [(r["status"], r["result"]) for r in read] == [("succeeded", i) for i in range(TASKS)]
    # Per task: the fetch, plus the blocker's, a few empty fetches and the worker's own
    # periodic scripts; the result backend's script made it 2 per task.
    assert calls["cmdstat_evalsha"] <= 1.1 * TASKS, calls
    assert calls["cmdstat_publish"] >= TASKS, calls  # AsyncResult.get()'s wake-up, as before


def test_a_stock_celery_client_gets_carried_results_by_their_published_state(
    tmp_path: Path,
) -> None:
    """``AsyncResult.get()`` of a plain Celery client (Celery's own ``redis://`` backend)
    subscribes to the result's key and waits for its PUBLISH: the carried SUCCESS and
    FAILURE wake it, here on an idle worker (the fetch that carries them finds nothing)."""
    with worker_stack(tmp_path, "stock", pool="inline") as stack:
        client = Celery("client", broker=stack.redis_url, backend=stack.redis_url)
        client.conf.update(task_serializer="json", accept_content=["json"])
        with contextlib.ExitStack() as exits:
            exits.callback(client.close)
            pubsub = stack.redis.pubsub()
            exits.callback(pubsub.close)
            sent = client.send_task(
                NOOP_TASK, kwargs={"echo": "carried", "sleep_seconds": 0.5}, queue=DEFAULT_QUEUE
            )
            pubsub.subscribe(CELERY_RESULT_KEY.format(task_id=sent.id))
            assert sent.get(timeout=30) == "carried"
            failing = client.send_task(NOOP_TASK, kwargs={"unknown": 1}, queue=DEFAULT_QUEUE)
            failing.get(timeout=30, propagate=False)
            assert failing.state == states.FAILURE
            published = wait_until(
                lambda: pubsub.get_message(ignore_subscribe_messages=True, timeout=1), 10, "a state"
            )
        assert json.loads(published["data"])["status"] == states.SUCCESS
        assert stack.worker.process.poll() is None


def test_a_warm_shutdown_writes_the_running_tasks_result_and_acknowledgement(
    tmp_path: Path,
) -> None:
    """SIGTERM while a task runs: the task finishes, and the channel's close sends what its
    acknowledgement carries (no tick comes after the last task)."""
    with worker_stack(tmp_path, "stopping", pool="inline") as stack:
        submitted = stack.api.post("/v1/tasks/noop", json={"echo": "last", "sleep_seconds": 1.5})
        running = submitted.json()["id"]
        wait_for_status(stack.api, running, {"started"})
        stack.worker.process.send_signal(signal.SIGTERM)
        assert stack.worker.process.wait(30) == 0
        status = stack.api.get(f"/v1/tasks/{running}").json()
        assert (status["status"], status["result"]) == ("succeeded", "last"), status
        assert stack.redis.hlen("unacked") == 0


@pytest.mark.parametrize("deliver", [False, True], ids=["call-lost", "reply-then-down"])
def test_redis_dying_at_the_call_carrying_a_result_loses_neither_result_nor_task(
    tmp_path: Path, deliver: bool
) -> None:
    """Redis "dies" at the call carrying a SUCCESS: before it (the call lost: the worker
    stores the state again through the backend's retried path once Redis is back, then
    acknowledges), or right after it (applied). Either way every task reads succeeded with
    its result, ran once, and no message is left behind."""
    with linked_stack(tmp_path, RedisLink, "inline") as (api, link, worker):
        warm = api.post("/v1/tasks/noop", json={"echo": "warm"}).json()["id"]
        assert wait_for_status(api, warm, timeout=60)["status"] == "succeeded"
        link.fail_at_next_write(deliver=deliver, markers=(SUCCESS_WRITE,))
        ids = [api.post("/v1/tasks/noop", json={"echo": i}).json()["id"] for i in range(3)]
        wait_until(lambda: link.failed, 30, "the call carrying a result")
        time.sleep(4)  # past the fetch's overdue reply (2 s): the worker retries meanwhile
        link.restore()
        done: list[dict[str, Any]] = [wait_for_status(api, i, timeout=90) for i in ids]
        wait_until(lambda: _nothing_in_flight(link), 60, "every message acknowledged")
        output = worker.output()
        assert worker.process.poll() is None, output[-3000:]
    assert [(d["status"], d["result"], d["executions"]) for d in done] == [
        ("succeeded", i, 1) for i in range(3)
    ], output[-3000:]


def _nothing_in_flight(link: RedisLink) -> bool:
    client = redis.Redis.from_url(link.url)
    try:
        return client.llen(DEFAULT_QUEUE) == 0 and client.hlen("unacked") == 0
    finally:
        client.close()
