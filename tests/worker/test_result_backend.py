"""Courier's result backend against a real Redis: a finished state is never overwritten, and
the rule costs no read of its own (one SET ... GET per state stored)."""

from __future__ import annotations

import json
import pickle
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import redis
from celery import Celery, states
from celery.app.task import Context
from celery.backends.redis import RedisBackend
from celery.exceptions import BackendStoreError, Reject
from kombu.exceptions import EncodeError
from redis.exceptions import InvalidResponse

from tests.utils.celery_apps import close_app, close_backend
from tests.utils.processes import RedisServer
from tests.utils.redis_link import GarblingLink
from worker.core.names import CELERY_RESULT_KEY, UNACKED_KEY
from worker.core.result_backend import (
    _SET_WHERE_DELIVERED,
    CourierRedisBackend,
    ResultNotStored,
    lost_to_redis,
)

EXPIRES = 300


@pytest.fixture
def backend(own_redis: RedisServer) -> Iterator[CourierRedisBackend]:
    app = Celery("results", backend=own_redis.url)
    backend = CourierRedisBackend(app=app, url=own_redis.url, expires=EXPIRES)
    yield backend
    close_backend(backend)
    close_app(app)


@pytest.fixture
def client(own_redis: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(own_redis.url)
    yield client
    client.close()


def command_calls(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    calls = {name: int(value["calls"]) for name, value in stats.items()}
    calls.pop("cmdstat_config|resetstat", None)
    return calls


def stored_status(client: redis.Redis, task_id: str) -> str:
    return str(json.loads(client.get(CELERY_RESULT_KEY.format(task_id=task_id)) or b"{}")["status"])


def test_a_state_is_stored_and_published_without_a_read_before_it(
    backend: CourierRedisBackend, client: redis.Redis
) -> None:
    """Counted by Redis (INFO commandstats): the script's SET ... GET reads the old state in
    the write itself; a GET before it would be one more command per state stored."""
    task_id = str(uuid.uuid4())
    backend.store_result(task_id, {"pid": 1}, states.STARTED)  # loads the script
    client.config_resetstat()
    with client.pubsub() as pubsub:
        pubsub.subscribe(CELERY_RESULT_KEY.format(task_id=task_id))
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"
        backend.store_result(task_id, "done", states.SUCCESS)
        published = pubsub.get_message(timeout=5)
    calls = command_calls(client)
    for pubsub_command in ("hello", "subscribe", "unsubscribe"):  # the test's own
        calls.pop(f"cmdstat_{pubsub_command}", None)
    assert calls == {"cmdstat_evalsha": 1, "cmdstat_set": 1, "cmdstat_publish": 1}
    assert json.loads(published["data"])["status"] == states.SUCCESS
    assert stored_status(client, task_id) == states.SUCCESS
    assert 0 < client.ttl(CELERY_RESULT_KEY.format(task_id=task_id)) <= EXPIRES


def test_a_state_is_stored_after_redis_lost_its_scripts(
    backend: CourierRedisBackend, client: redis.Redis
) -> None:
    """A restarted Redis (or SCRIPT FLUSH) answers NOSCRIPT to the EVALSHA: the script goes
    once in full and the state is stored, under the same rule."""
    task_id = str(uuid.uuid4())
    backend.store_result(task_id, {"pid": 1}, states.STARTED)
    client.script_flush()
    backend.store_result(task_id, "done", states.SUCCESS)
    assert stored_status(client, task_id) == states.SUCCESS
    client.script_flush()
    backend.store_result(task_id, {"pid": 1}, states.STARTED)
    assert stored_status(client, task_id) == states.SUCCESS


def test_a_finished_state_stays_unpublished_over_and_keeps_a_ttl(
    backend: CourierRedisBackend, client: redis.Redis
) -> None:
    task_id = str(uuid.uuid4())
    key = CELERY_RESULT_KEY.format(task_id=task_id)
    backend.store_result(task_id, "done", states.SUCCESS)
    done = client.get(key)
    with client.pubsub() as pubsub:
        pubsub.subscribe(key)
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"
        backend.store_result(task_id, {"pid": 1}, states.STARTED)
        backend.store_result(task_id, None, states.FAILURE)
        client.publish(key, b"sentinel")
        # Messages on a channel arrive in order: had a late state been published, it came first.
        assert pubsub.get_message(timeout=5)["data"] == b"sentinel"
    assert client.get(key) == done
    assert 0 < client.ttl(key) <= EXPIRES


def test_without_expiry_a_finished_state_is_kept_without_one(
    own_redis: RedisServer, client: redis.Redis
) -> None:
    app = Celery("results", backend=own_redis.url)
    backend = CourierRedisBackend(app=app, url=own_redis.url, expires=0)
    task_id = str(uuid.uuid4())
    backend.store_result(task_id, "done", states.SUCCESS)
    backend.store_result(task_id, None, states.FAILURE)
    close_backend(backend)
    close_app(app)
    assert stored_status(client, task_id) == states.SUCCESS
    assert client.ttl(CELERY_RESULT_KEY.format(task_id=task_id)) == -1


def test_the_sentinel_write_stores_only_where_delivered_and_never_over_a_final_state(
    client: redis.Redis,
) -> None:
    """The Sentinel backend's script: -1 when the delivery is not recorded on this server
    (nothing stored), 0 over a finished state (kept), 1 when stored."""
    store = client.register_script(_SET_WHERE_DELIVERED)
    key = CELERY_RESULT_KEY.format(task_id=str(uuid.uuid4()))
    success = json.dumps({"status": states.SUCCESS, "result": 1})
    failure = json.dumps({"status": states.FAILURE, "result": None})
    assert store(keys=[key, UNACKED_KEY], args=[success, EXPIRES, "tag"]) == -1
    assert client.exists(key) == 0
    client.hset(UNACKED_KEY, "tag", "[]")
    assert store(keys=[key, UNACKED_KEY], args=[success, EXPIRES, "tag"]) == 1
    assert store(keys=[key, UNACKED_KEY], args=[failure, EXPIRES, "tag"]) == 0
    assert client.get(key) == success.encode()
    assert 0 < client.ttl(key) <= EXPIRES


def _requests() -> list[Any]:
    stamped = Context(
        id="t1", task="noop", args=[1], kwargs={"echo": 1}, hostname="w@host", retries=2,
        delivery_info={"routing_key": "courier"}, group="g1", parent_id="p1",
        stamps={"a": 1, "b": 2}, stamped_headers=["a"],
    )  # fmt: skip
    bare = Context(id="t2", task="noop", hostname="w@host", delivery_info=None)
    return [None, stamped, bare]


@pytest.mark.parametrize("extended", [True, False])
@pytest.mark.parametrize("zone", [None, "Europe/Paris"])
def test_the_stored_meta_is_celerys_key_for_key_in_its_order(
    own_redis: RedisServer, extended: bool, zone: str | None
) -> None:
    """The meta dict is built without Celery's per-call lookups; what it holds, in which order
    (the stored JSON text follows it) and the zone of its ``date_done`` are Celery's."""
    app = Celery("meta", backend=own_redis.url, result_extended=extended, timezone=zone)
    backend = CourierRedisBackend(app=app, url=own_redis.url, expires=EXPIRES)
    try:
        for request in _requests():
            for state in (states.STARTED, states.SUCCESS, states.FAILURE, states.REVOKED):
                for format_date in (True, False):
                    args = ({"r": 1}, state, "tb", request, format_date)
                    ours = backend._get_result_meta(*args)
                    celerys = RedisBackend._get_result_meta(backend, *args)  # type: ignore[attr-defined]
                    our_date, their_date = ours.pop("date_done"), celerys.pop("date_done")
                    assert list(ours.items()) == list(celerys.items())
                    if their_date is None:
                        assert our_date is None
                        continue
                    if format_date:
                        our_date = datetime.fromisoformat(our_date)
                        their_date = datetime.fromisoformat(their_date)
                    assert our_date.utcoffset() == their_date.utcoffset()
                    assert abs((our_date - their_date).total_seconds()) < 5
    finally:
        close_backend(backend)
        close_app(app)


def test_encode_gives_kombus_json_text_and_its_error(backend: CourierRedisBackend) -> None:
    """One kept encoder, the same text as Celery's ``encode`` through kombu's registry for the
    types kombu's JSON encoder knows, and the registry's EncodeError for what it does not."""
    value = {
        "status": states.SUCCESS, "uuid": uuid.UUID(int=7),
        "when": datetime(2026, 1, 2, tzinfo=UTC), "amount": Decimal("1.50"),
        "raw": b"\xff\x00", "text": "é", "list": [1, None, True],
    }  # fmt: skip
    celery_encode: Any = RedisBackend.encode
    assert backend.encode(value) == celery_encode(backend, value)
    with pytest.raises(EncodeError):
        celery_encode(backend, {"x": object()})
    with pytest.raises(EncodeError):
        backend.encode({"x": object()})


@pytest.fixture
def retrying(own_redis: RedisServer) -> Iterator[tuple[CourierRedisBackend, GarblingLink]]:
    """A worker's backend (``result_backend_always_retry``), 2 retries 10 ms apart, reaching
    Redis through a link that can garble replies."""
    with GarblingLink(own_redis.port) as link:
        app = Celery(
            "retrying",
            backend=link.url,
            result_backend_always_retry=True,
            result_backend_max_retries=2,
            result_backend_base_sleep_between_retries_ms=10,
            result_backend_max_sleep_between_retries_ms=10,
        )
        backend = CourierRedisBackend(app=app, url=link.url, expires=EXPIRES)
        yield backend, link
        close_backend(backend)
        close_app(app)


# In the value of every SUCCESS this backend stores (kombu's JSON).
SUCCESS_WRITE = (b'"status": "SUCCESS"',)


def test_a_store_whose_reply_is_unparsable_is_retried(
    retrying: tuple[CourierRedisBackend, GarblingLink], client: redis.Redis
) -> None:
    """``InvalidResponse`` is not among kombu's connection errors, which alone Celery retries."""
    backend, link = retrying
    task_id = str(uuid.uuid4())
    link.garble(SUCCESS_WRITE, times=2)
    backend.store_result(task_id, "r", states.SUCCESS, request=Context(id=task_id))
    assert link.garbled == 2
    assert stored_status(client, task_id) == states.SUCCESS


def test_a_worker_state_redis_never_takes_sends_the_message_back(
    retrying: tuple[CourierRedisBackend, GarblingLink], client: redis.Redis
) -> None:
    """Out of retries: in a worker (a request) a requeueing Reject, which Celery's tracer lets
    through instead of storing FAILURE, and which survives the pickling a prefork child's error
    goes through; elsewhere (the API's revoke: no request) Celery's BackendStoreError."""
    backend, link = retrying
    task_id = str(uuid.uuid4())
    link.garble(SUCCESS_WRITE, times=3)
    with pytest.raises(ResultNotStored) as raised:
        backend.store_result(task_id, "r", states.SUCCESS, request=Context(id=task_id))
    assert isinstance(raised.value, Reject)
    rejected: Any = raised.value  # celery-types lacks Reject's attributes
    assert rejected.requeue
    assert isinstance(rejected.__cause__, BackendStoreError)
    copy = pickle.loads(pickle.dumps(rejected))
    assert (type(copy), copy.requeue, copy.reason) == (ResultNotStored, True, rejected.reason)
    link.garble(SUCCESS_WRITE, times=3)
    with pytest.raises(BackendStoreError):
        backend.store_result(task_id, "r", states.SUCCESS)
    assert link.garbled == 6
    assert client.exists(CELERY_RESULT_KEY.format(task_id=task_id)) == 0


def test_only_redis_failures_count_as_a_state_not_stored() -> None:
    """What sends a task back rather than failing it: Redis away, silent, refusing for now or
    answering garbage; not an error of the task's own making (a result too large for Redis)."""
    lost = [
        redis.ConnectionError("gone"), redis.TimeoutError("slow"), InvalidResponse("?x"),
        redis.exceptions.ReadOnlyError("READONLY"), redis.ResponseError("NOREPLICAS not enough"),
        redis.exceptions.OutOfMemoryError("OOM"), ConnectionResetError(),
    ]  # fmt: skip
    kept = [
        BackendStoreError("value too large for Redis backend"), redis.ResponseError("ERR bad"),
        EncodeError("no"), ValueError("no"),
    ]  # fmt: skip
    assert [lost_to_redis(exc) for exc in lost] == [True] * len(lost)
    assert [lost_to_redis(exc) for exc in kept] == [False] * len(kept)
