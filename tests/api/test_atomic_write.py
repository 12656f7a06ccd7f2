"""A submit's one-script write stores exactly what the MULTI/EXEC of the same commands stored."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from app.atomic_write import (
    NO_WAIT,
    WRITE_ALL_SHA,
    WRITE_TASK_SHA,
    Condition,
    ConditionFailed,
    NotReplicated,
    Replication,
    Written,
    pack_command,
    script_arguments,
    task_arguments,
    write_all,
    write_script,
)
from app.kept_connections import NotReached
from tests.utils.processes import RedisServer, free_port, wait_until
from worker.core.names import DEFAULT_QUEUE
from worker.core.redis_client import Command, queue_commands

COMMANDS: list[Command] = [
    ("hset", ("rec", None, None, {"name": "noop", "queue": DEFAULT_QUEUE, "enqueued_at": 1.25})),
    ("expire", ("rec", 86400)),
    ("lpush", ("q", '{"body": "\\u00e9", "n": 1}')),
]


@pytest.fixture
def client(own_redis: RedisServer) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(own_redis.url) as sync:
        yield sync


def _stored(client: redis.Redis) -> tuple[dict[Any, Any], int, list[Any]]:
    return client.hgetall("rec"), client.ttl("rec"), client.lrange("q", 0, -1)


def _write(
    url: str,
    commands: list[Command],
    condition: Condition | None = None,
    replication: Replication = NO_WAIT,
) -> Written:
    async def run() -> Written:
        aclient = AsyncRedis.from_url(url)
        try:
            return await write_all(aclient, commands, condition, replication)
        finally:
            await aclient.aclose()

    return asyncio.run(run())


def test_script_arguments_are_the_commands_arguments() -> None:
    keys, argv = script_arguments(COMMANDS)
    assert keys == ["rec", "rec", "q"]
    assert argv[0] == b""  # no condition
    assert argv[1:9] == [7, "HSET", "name", "noop", "queue", DEFAULT_QUEUE, "enqueued_at", 1.25]
    assert argv[9:] == [2, "EXPIRE", 86400, 2, "LPUSH", '{"body": "\\u00e9", "n": 1}']
    keys, argv = script_arguments(COMMANDS, Condition("claim", b"mine"))
    assert (keys[:2], argv[0]) == (["claim", "rec"], b"=mine")
    keys, argv = script_arguments(COMMANDS, Condition("rec"))
    assert (keys[:2], argv[0]) == (["rec", "rec"], b"!")


@pytest.mark.parametrize(
    "args",
    [
        ("EVALSHA", "0" * 40, 2, "rec", "q", 7, "HSET", "enqueued_at", 1.25, -3, 10**20),
        ("EVAL", "return 1", 0, "\u00e9t\u00e9 \U0001f600", b"\x00\xff raw", ""),
        ("LPUSH", "q", "x" * 7000, b"y" * 7000, "after a chunked argument"),
    ],
)
def test_commands_are_packed_as_redis_py_packs_them(args: tuple[object, ...]) -> None:
    """The wire bytes, compared with redis-py's own packer (which sends arguments over its
    buffer cutoff as separate chunks of the same stream)."""
    connection = AsyncRedis().connection_pool.make_connection()  # type: ignore[no-untyped-call]
    theirs = b"".join(connection.pack_command(*args))
    assert pack_command(args, connection.encoder) == theirs


def test_remembered_arguments_are_packed_as_the_first_time() -> None:
    """Short strings and integers are packed once and remembered: a string and an integer
    that print alike, a bool and a float stay apart, and each pack is still redis-py's."""
    connection = AsyncRedis().connection_pool.make_connection()  # type: ignore[no-untyped-call]
    args = ("HSET", "k", "1", 1, 1.0, "1.0", -7, 10**30, "x" * 41, b"1")
    theirs = b"".join(connection.pack_command(*args))
    for _ in range(3):
        assert pack_command(args, connection.encoder) == theirs
    with pytest.raises(redis.DataError):
        pack_command(("LPUSH", "q", True), connection.encoder)  # after 1 was remembered


def test_what_redis_py_refuses_to_send_is_refused_alike() -> None:
    connection = AsyncRedis().connection_pool.make_connection()  # type: ignore[no-untyped-call]
    with pytest.raises(redis.DataError):
        pack_command(("LPUSH", "q", True), connection.encoder)
    with pytest.raises(redis.DataError):
        pack_command(("LPUSH", "q", None), connection.encoder)


def test_the_script_stores_what_the_transaction_stored(
    client: redis.Redis, own_redis: RedisServer
) -> None:
    with client.pipeline(transaction=True) as pipe:
        queue_commands(pipe, COMMANDS)
        pipe.execute()
    by_transaction = _stored(client)
    client.flushall()
    _write(own_redis.url, COMMANDS)
    assert _stored(client) == by_transaction


@pytest.mark.parametrize("replicas", [0, 1])
def test_a_flushed_script_cache_is_refilled_in_the_same_call(
    replicas: int, tmp_path: Path, client: redis.Redis, own_redis: RedisServer
) -> None:
    """With a WAIT pipelined behind the script too: its reply to the NOSCRIPT attempt is read
    and dropped, not taken for the answer to the EVAL that follows."""
    with contextlib.ExitStack() as stack:
        if replicas:
            stack.enter_context(replica_of(own_redis, tmp_path))
        replication = Replication(replicas, 2000)
        client.script_flush()
        assert _write(own_redis.url, COMMANDS, None, replication).applied
        assert client.llen("q") == 1
        _write(own_redis.url, COMMANDS, None, replication)  # now by EVALSHA
        assert client.llen("q") == 2


def test_a_refused_write_stores_nothing(client: redis.Redis, own_redis: RedisServer) -> None:
    client.replicaof("127.0.0.1", free_port())
    try:
        with pytest.raises(redis.exceptions.ReadOnlyError):
            _write(own_redis.url, COMMANDS)
    finally:
        client.replicaof("NO", "ONE")
    assert _stored(client) == ({}, -2, [])


def test_an_unreachable_redis_is_not_reached() -> None:
    with pytest.raises(NotReached):
        _write(f"redis://127.0.0.1:{free_port()}/0", COMMANDS)


def test_a_condition_writes_all_or_nothing(client: redis.Redis, own_redis: RedisServer) -> None:
    client.set("claim", "mine")
    with pytest.raises(ConditionFailed):
        _write(own_redis.url, COMMANDS, Condition("claim", b"theirs"))
    assert _stored(client) == ({}, -2, [])
    _write(own_redis.url, COMMANDS, Condition("claim", b"mine"))
    assert client.llen("q") == 1
    # '!': only while the key is absent (a re-write after a failover).
    with pytest.raises(ConditionFailed):
        _write(own_redis.url, COMMANDS, Condition("rec"))
    assert client.llen("q") == 1
    client.delete("rec")
    _write(own_redis.url, COMMANDS, Condition("rec"))
    assert client.llen("q") == 2


@contextlib.contextmanager
def replica_of(primary: RedisServer, tmp_path: Path) -> Iterator[RedisServer]:
    with redis.Redis.from_url(primary.url) as direct:
        direct.config_set("repl-diskless-sync-delay", 0)  # sync at once, not after 5 s
    with RedisServer(
        tmp_path / "replica", extra_args=("--replicaof", "127.0.0.1", str(primary.port))
    ) as replica:
        with redis.Redis.from_url(replica.url) as direct:
            wait_until(
                lambda: direct.info("replication").get("master_link_status") == "up",
                30,
                "the replica in sync",
            )
        yield replica


def test_wait_answers_once_a_replica_has_the_write_and_says_when_none_did(
    tmp_path: Path, client: redis.Redis, own_redis: RedisServer
) -> None:
    with replica_of(own_redis, tmp_path) as replica:
        written = _write(own_redis.url, COMMANDS, None, Replication(1, 2000))
        assert written.address == ("127.0.0.1", own_redis.port)
        with redis.Redis.from_url(replica.url) as direct:
            assert direct.llen("q") == 1  # WAIT returned: the replica has it
        assert replica.process is not None
        os.kill(replica.process.pid, signal.SIGSTOP)
        try:
            with pytest.raises(NotReplicated, match="reached 0 of the 1 replica"):
                _write(own_redis.url, COMMANDS, None, Replication(1, 300))
        finally:
            os.kill(replica.process.pid, signal.SIGCONT)
    assert client.llen("q") == 2  # stored on the primary all the same: "may have been stored"


def test_a_kept_connection_redis_closed_is_replaced_before_the_next_write(
    client: redis.Redis, own_redis: RedisServer
) -> None:
    """The write keeps its connections out of the pool between calls; one the server dropped
    while idle is reconnected before sending, as a pool checkout would, not answered 503."""

    async def run() -> None:
        aclient = AsyncRedis.from_url(own_redis.url)
        try:
            await write_all(aclient, COMMANDS)
            client.client_kill_filter(_type="normal", skipme=True)
            await asyncio.sleep(0.2)  # idle: the event loop sees the connection's end
            await write_all(aclient, COMMANDS)
        finally:
            await aclient.aclose()

    asyncio.run(run())
    assert client.llen("q") == 2


def test_a_kept_connection_to_a_former_primary_reconnects_first(own_redis: RedisServer) -> None:
    """Sentinel mode: once the pool has learnt of another primary, a kept connection made to
    the old one is dropped before its next write (the pool drops its idle ones likewise)."""

    async def run() -> tuple[int, int]:
        aclient = AsyncRedis.from_url(own_redis.url)
        pool: Any = aclient.connection_pool
        try:
            await write_all(aclient, COMMANDS)
            (connection,) = pool._in_use_connections
            before = id(connection._writer)
            pool.master_address = ("127.0.0.1", own_redis.port)  # the same primary: kept
            await write_all(aclient, COMMANDS)
            same = id(connection._writer)
            pool.master_address = ("192.0.2.1", 6379)  # another one: reconnected
            await write_all(aclient, COMMANDS)
            return int(same == before), int(id(connection._writer) != before)
        finally:
            await aclient.aclose()

    assert asyncio.run(run()) == (1, 1)


@pytest.mark.parametrize(
    "command",
    [
        *COMMANDS,
        ("lpush", ("q", "a", b"b", 3)),
        ("expire", ("rec", 10, True)),
        ("expire", ("rec", timedelta(seconds=90))),
        ("expire", ("rec", 1.5)),
        ("hset", ("rec", "field", "value")),
        ("hset", ("rec", None, None, {"only": 1})),
        ("hset", ("rec", "k", "v", {"also": 2})),
        ("hset", ("rec", None, None, None, ["a", 1])),
        ("setex", ("key", 60, "value")),
    ],
    ids=str,
)
def test_commands_are_sent_as_redis_py_sends_them(command: Command) -> None:
    """``script_arguments`` builds a submit's own commands without redis-py's methods: the same
    arguments as the methods would send, and any other command through the methods."""

    class Sent(redis.Redis):
        def __init__(self) -> None:
            self.sent: list[tuple[Any, ...]] = []

        def execute_command(self, *args: Any, **options: Any) -> None:
            self.sent.append(args)

    through_redis_py = Sent()
    name, args = command
    getattr(through_redis_py, name)(*args)
    sent_name, key, *rest = through_redis_py.sent[0]
    keys, argv = script_arguments([command])
    expected = [b"", len(rest) + 1, sent_name, *rest]
    # Typed: 1 and 1.0 are equal, and packed differently.
    assert [(type(a), a) for a in [*keys, *argv]] == [(type(a), a) for a in [key, *expected]]


def test_the_task_script_stores_what_the_general_script_stored(
    client: redis.Redis, own_redis: RedisServer
) -> None:
    """A submit's three writes go by ``WRITE_TASK``; the same keys, values and time to live as
    by ``WRITE_ALL``, which writes every other shape."""
    task = task_arguments(COMMANDS)
    assert task is not None
    _write(own_redis.url, COMMANDS)
    by_task = _stored(client)
    client.flushall()

    async def by_general_script() -> None:
        aclient = AsyncRedis.from_url(own_redis.url)
        try:
            await write_script(aclient, *script_arguments(COMMANDS), NO_WAIT)
        finally:
            await aclient.aclose()

    asyncio.run(by_general_script())
    assert _stored(client) == by_task
    assert client.script_exists(WRITE_TASK_SHA, WRITE_ALL_SHA) == [True, True]


@pytest.mark.parametrize(
    "commands",
    [
        COMMANDS[:2],
        [COMMANDS[1], COMMANDS[0], COMMANDS[2]],
        [COMMANDS[0], ("expire", ("other", 86400)), COMMANDS[2]],
        [COMMANDS[0], ("expire", ("rec", timedelta(days=1))), COMMANDS[2]],
        [COMMANDS[0], COMMANDS[1], ("lpush", ("q", "a", "b"))],
        [COMMANDS[0], COMMANDS[1], ("rpush", ("q", "a"))],
    ],
)
def test_any_other_shape_takes_the_general_script(commands: list[Command]) -> None:
    assert task_arguments(commands) is None
