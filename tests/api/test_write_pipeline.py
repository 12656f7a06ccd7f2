"""Writes issued in one turn of the event loop go to Redis together, each keeping its own outcome.

Against a real redis-server: stopped (SIGSTOP), killed, full, read-only, and answering some
commands of a flush with an error reply or too late.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from app.atomic_write import Condition, ConditionFailed, Written, write_all
from app.kept_connections import NotReached
from app.write_pipeline import pipelined_call
from tests.utils.processes import RedisServer, free_port
from tests.utils.redis_link import CuttingLink
from worker.core.redis_client import Command, refusal_code

IN_FLIGHT = 16
SOCKET_TIMEOUT = 0.5


@pytest.fixture
def client(own_redis: RedisServer) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(own_redis.url) as sync:
        yield sync


def submit_commands(n: int) -> list[Command]:
    """A submit's writes (record, time to live, message) for task ``n``."""
    return [
        ("hset", (f"rec:{n}", None, None, {"name": "noop", "n": n})),
        ("expire", (f"rec:{n}", 600)),
        ("lpush", ("q", f"message {n}")),
    ]


def run_with(url: str, body: Callable[[AsyncRedis], Awaitable[Any]], **options: Any) -> Any:
    """``body`` with an asyncio client of ``url`` warmed up (connected, scripts cached)."""

    async def run() -> Any:
        aclient = AsyncRedis.from_url(url, socket_timeout=SOCKET_TIMEOUT, **options)
        try:
            await write_all(aclient, submit_commands(-1))
            return await body(aclient)
        finally:
            await aclient.aclose()

    return asyncio.run(run())


async def all_at_once(aclient: AsyncRedis, n: int = IN_FLIGHT) -> list[Written | BaseException]:
    return await asyncio.gather(
        *(write_all(aclient, submit_commands(i)) for i in range(n)), return_exceptions=True
    )


def resp(*args: str) -> bytes:
    """A command as RESP, as a client sends it."""
    parts = [f"${len(arg.encode())}\r\n{arg}\r\n" for arg in args]
    return f"*{len(args)}\r\n{''.join(parts)}".encode()


# A script that keeps Redis busy for a second (other clients wait, below busy-reply-threshold).
BUSY_SECOND = (
    "local function now() local t = redis.call('TIME') return t[1] * 1000000 + t[2] end "
    "local stop = now() + 1000000 while now() < stop do end"
)


def reads(client: redis.Redis) -> int:
    """How many reads redis-server made from its clients' sockets so far."""
    return int(client.info("stats")["total_reads_processed"])


def test_writes_issued_together_reach_redis_in_one_read_and_are_all_stored(
    client: redis.Redis, own_redis: RedisServer
) -> None:
    """Before, each concurrent write was its own send and its own read by redis-server."""

    async def counted(aclient: AsyncRedis) -> tuple[list[Any], int]:
        before = reads(client)
        answers = await all_at_once(aclient)
        return answers, reads(client) - before

    answers, read = run_with(own_redis.url, counted)
    assert read <= 2  # the flush, and the INFO that counts it: not 16
    assert all(isinstance(a, Written) and a.applied for a in answers), answers
    assert client.llen("q") == IN_FLIGHT + 1
    assert all(client.hget(f"rec:{i}", "n") == str(i).encode() for i in range(IN_FLIGHT))


def test_each_write_of_a_flush_keeps_its_own_outcome(
    client: redis.Redis, own_redis: RedisServer
) -> None:
    """A guarded write whose condition fails writes nothing, beside writes that succeed."""
    client.set("claim", "mine")

    async def mixed(aclient: AsyncRedis) -> list[Any]:
        return await asyncio.gather(
            *(
                write_all(
                    aclient, submit_commands(i), Condition("claim", b"theirs" if i % 2 else b"mine")
                )
                for i in range(IN_FLIGHT)
            ),
            return_exceptions=True,
        )

    answers = run_with(own_redis.url, mixed)
    for i, answer in enumerate(answers):
        if i % 2:
            assert isinstance(answer, ConditionFailed)
            assert not client.exists(f"rec:{i}")
        else:
            assert isinstance(answer, Written) and answer.applied
            assert client.exists(f"rec:{i}")


def test_an_error_reply_fails_its_own_command_only(own_redis: RedisServer) -> None:
    async def commands(aclient: AsyncRedis) -> list[Any]:
        pool = aclient.connection_pool
        answers: list[Any] = await asyncio.gather(
            pipelined_call(pool, resp("SET", "a", "1")),
            pipelined_call(pool, resp("LPUSH", "a")),  # wrong arity
            pipelined_call(pool, resp("INCR", "a")),
            return_exceptions=True,
        )
        return answers

    first, second, third = run_with(own_redis.url, commands)
    address = ("127.0.0.1", own_redis.port)
    assert first == (b"OK", address)
    assert isinstance(second, redis.ResponseError) and "wrong number" in str(second)
    assert third == (2, address)


def test_a_reply_cut_off_fails_its_command_and_those_after_it(
    client: redis.Redis, own_redis: RedisServer
) -> None:
    """The first reply came: its caller has it. The link died inside the second: that
    command and the one behind it are unknown (Redis ran both), after the socket timeout."""
    with CuttingLink(own_redis.port) as link:

        async def cut(aclient: AsyncRedis) -> tuple[list[Any], float]:
            pool = aclient.connection_pool
            link.cut_next_reply(len(b"+OK\r\n") + 2)
            started = time.monotonic()
            answers: list[Any] = await asyncio.gather(
                pipelined_call(pool, resp("SET", "a", "1")),
                pipelined_call(pool, resp("INCR", "n")),
                pipelined_call(pool, resp("INCR", "n")),
                return_exceptions=True,
            )
            return answers, time.monotonic() - started

        (first, second, third), waited = run_with(link.url, cut)
    assert first == (b"OK", ("127.0.0.1", link.port))
    assert isinstance(second, redis.TimeoutError) and third is second
    assert SOCKET_TIMEOUT <= waited < SOCKET_TIMEOUT + 1
    assert client.get("n") == b"2"


def test_late_replies_are_never_read_as_the_next_commands_answers(own_redis: RedisServer) -> None:
    """Redis answered the flush after the socket timeout: its connection was dropped, so the
    next command's reply is its own, not the late ``OK``."""

    async def late(aclient: AsyncRedis) -> tuple[list[Any], Any]:
        pool = aclient.connection_pool
        answers: list[Any] = await asyncio.gather(
            pipelined_call(pool, resp("EVAL", BUSY_SECOND, "0")),
            pipelined_call(pool, resp("SET", "b", "2")),
            return_exceptions=True,
        )
        await asyncio.sleep(1)  # the script is over, the late replies sent
        return answers, await pipelined_call(pool, resp("GET", "b"))

    (busy, then), after = run_with(own_redis.url, late)
    assert isinstance(busy, redis.TimeoutError) and then is busy
    assert after == (b"2", ("127.0.0.1", own_redis.port))


def test_a_stopped_redis_fails_the_whole_flush_in_time_as_unknown(
    client: redis.Redis, own_redis: RedisServer
) -> None:
    """No reply within the socket timeout: every write of the flush may have been stored,
    and indeed Redis runs them all once it resumes."""
    assert own_redis.process is not None
    pid = own_redis.process.pid

    async def frozen(aclient: AsyncRedis) -> tuple[list[Any], float]:
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            answers = await all_at_once(aclient)
            return answers, time.monotonic() - started
        finally:
            os.kill(pid, signal.SIGCONT)

    answers, waited = run_with(own_redis.url, frozen)
    assert waited < SOCKET_TIMEOUT + 1
    assert all(isinstance(a, redis.TimeoutError) for a in answers), answers
    assert client.llen("q") == IN_FLIGHT + 1


def test_a_killed_redis_is_not_reached_by_the_flush(own_redis: RedisServer) -> None:
    async def killed(aclient: AsyncRedis) -> list[Any]:
        own_redis.kill()
        await asyncio.sleep(0.2)  # the kept connection sees its end while idle
        return await all_at_once(aclient)

    answers = run_with(own_redis.url, killed)
    assert all(isinstance(a, NotReached) for a in answers), answers


def test_an_unreachable_redis_is_not_reached_by_any_write_of_the_flush(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each write answers "not reached", and nothing else is said: the flush does not end with
    an exception nobody awaits, which asyncio logs as an ERROR with its traceback (seen in CI:
    one per flush while Redis was away)."""

    async def unreachable() -> list[Any]:
        aclient = AsyncRedis.from_url(f"redis://127.0.0.1:{free_port()}/0")
        try:
            return await all_at_once(aclient)
        finally:
            await aclient.aclose()
            gc.collect()  # a task's unretrieved exception is logged when it is collected

    assert all(isinstance(a, NotReached) for a in asyncio.run(unreachable()))
    assert "never retrieved" not in caplog.text


@pytest.mark.parametrize("refusal", ["OOM", "READONLY"])
def test_a_refusing_redis_refuses_every_write_of_the_flush_and_stores_none(
    refusal: str, client: redis.Redis, own_redis: RedisServer
) -> None:
    async def refused(aclient: AsyncRedis) -> list[Any]:
        if refusal == "OOM":
            client.config_set("maxmemory", 1)
        else:
            client.replicaof("127.0.0.1", free_port())
        try:
            return await all_at_once(aclient)
        finally:
            client.config_set("maxmemory", 0)
            client.replicaof("NO", "ONE")

    answers = run_with(own_redis.url, refused)
    assert all(refusal_code(a) == refusal for a in answers), answers
    assert client.llen("q") == 1  # the warm-up's


def test_a_flush_cancelled_before_it_runs_leaves_no_caller_waiting_and_sends_nothing(
    own_redis: RedisServer, client: redis.Redis
) -> None:
    """The loop shutting down cancels the flush task before its first step: its callers are
    answered "not reached" (nothing was sent), and the next write starts a batch of its own
    instead of joining the dead one (found by review: both waited for ever)."""

    async def body(aclient: AsyncRedis) -> tuple[Any, Any]:
        pool = aclient.connection_pool
        caller = asyncio.ensure_future(pipelined_call(pool, resp("SET", "cancelled", "1")))
        await asyncio.sleep(0)  # the caller joined a batch, whose flush has not run yet
        flushing = [task for task in asyncio.all_tasks() if "_flush" in repr(task.get_coro())]
        assert len(flushing) == 1
        flushing[0].cancel()
        outcome = await asyncio.wait_for(asyncio.gather(caller, return_exceptions=True), 2)
        later = await asyncio.wait_for(pipelined_call(pool, resp("SET", "later", "1")), 2)
        return outcome[0], later[0]

    error, later = run_with(own_redis.url, body)
    assert isinstance(error, NotReached), error
    assert later == b"OK"
    assert client.get("cancelled") is None


def test_a_caller_cancelled_before_the_flush_has_its_write_left_unsent(
    own_redis: RedisServer, client: redis.Redis
) -> None:
    """A client that went away before its write left (its request cancelled): nothing of it
    is sent, as before the writes were pipelined; the others of its batch are."""

    async def body(aclient: AsyncRedis) -> Any:
        pool = aclient.connection_pool
        gone = asyncio.ensure_future(pipelined_call(pool, resp("SET", "gone", "1")))
        kept = asyncio.ensure_future(pipelined_call(pool, resp("SET", "kept", "1")))
        await asyncio.sleep(0)  # both joined one batch
        gone.cancel()
        return await asyncio.wait_for(kept, 2)

    assert run_with(own_redis.url, body)[0] == b"OK"
    assert (client.get("gone"), client.get("kept")) == (None, b"1")
