"""A submit's one-script write stores exactly what the MULTI/EXEC of the same commands stored."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from app.atomic_write import NotReached, pack_command, script_arguments, write_all
from tests.utils.processes import RedisServer, free_port
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


def _stored(client: redis.Redis) -> tuple[dict[bytes, bytes], int, list[bytes]]:
    return client.hgetall("rec"), client.ttl("rec"), client.lrange("q", 0, -1)


def _write(url: str, commands: list[Command]) -> None:
    async def run() -> None:
        aclient = AsyncRedis.from_url(url)
        try:
            await write_all(aclient, commands)
        finally:
            await aclient.aclose()

    asyncio.run(run())


def test_script_arguments_are_the_commands_arguments() -> None:
    keys, argv = script_arguments(COMMANDS)
    assert keys == ["rec", "rec", "q"]
    assert argv[:8] == [7, "HSET", "name", "noop", "queue", DEFAULT_QUEUE, "enqueued_at", 1.25]
    assert argv[8:] == [2, "EXPIRE", 86400, 2, "LPUSH", '{"body": "\\u00e9", "n": 1}']


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


def test_a_flushed_script_cache_is_refilled_in_the_same_call(
    client: redis.Redis, own_redis: RedisServer
) -> None:
    client.script_flush()
    _write(own_redis.url, COMMANDS)
    assert client.llen("q") == 1
    _write(own_redis.url, COMMANDS)  # now by EVALSHA
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
