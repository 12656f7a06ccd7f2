"""A ``Call`` against the real Redis: the worker's blocking client and the API's asyncio one send
the same commands and read the same result, and a script Redis forgot is sent again in full."""

from __future__ import annotations

import asyncio
from typing import Any

import redis
import redis.asyncio

from tests.utils.processes import RedisServer
from worker.core.redis_calls import Call, Lua

PLUS_ONE = Lua("return tonumber(ARGV[1]) + 1")


def calls_made(client: redis.Redis) -> dict[str, int]:
    stats: dict[str, Any] = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(stat["calls"]) for name, stat in stats.items()}


def test_both_clients_run_a_script_and_send_it_in_full_once_redis_forgot_it(
    own_redis: RedisServer,
) -> None:
    call = Call(int, PLUS_ONE, (), [41])

    async def twice_async() -> list[int]:
        async with redis.asyncio.Redis.from_url(own_redis.url) as aclient:
            await aclient.script_flush()
            return [await call.run_async(aclient), await call.run_async(aclient)]

    with redis.Redis.from_url(own_redis.url) as client:
        client.script_flush()
        assert [call.run(client), call.run(client)] == [42, 42]
        assert asyncio.run(twice_async()) == [42, 42]
        made = calls_made(client)
    # Each client: NOSCRIPT, the script in full, then by its hash.
    assert (made["eval"], made["evalsha"]) == (2, 4)


def test_commands_run_in_one_transaction_and_a_lone_command_outside_one(
    own_redis: RedisServer,
) -> None:
    write: Call[Any] = Call(commands=[("set", ("k", "v")), ("expire", ("k", 60))])
    read: Call[str] = Call(lambda raw: raw.decode(), command=("get", ("k",)))

    async def on_asyncio() -> str:
        async with redis.asyncio.Redis.from_url(own_redis.url) as aclient:
            await write.run_async(aclient)
            return await read.run_async(aclient)

    with redis.Redis.from_url(own_redis.url) as client:
        assert write.run(client) == [True, True]
        assert read.run(client) == "v"
        assert asyncio.run(on_asyncio()) == "v"
        made = calls_made(client)
    assert (made["multi"], made["exec"], made["get"]) == (2, 2, 2)
