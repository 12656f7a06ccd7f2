"""Redis's refusals, as a real redis-server sends them, recognised wherever they surface."""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from pathlib import Path

import pytest
import redis

from tests.utils.processes import RedisServer, free_port, wait_until
from worker.core.redis_client import RedisMemory, is_transient, refusal_code


def refused(client: redis.Redis) -> list[BaseException]:
    """A write refused three ways: a plain command, inside MULTI/EXEC, inside a script."""
    errors: list[BaseException] = []
    with pytest.raises(redis.RedisError) as plain:
        client.set("k", "v")
    errors.append(plain.value)
    with pytest.raises(redis.RedisError) as multi, client.pipeline(transaction=True) as pipe:
        pipe.hset("h", "f", "v")
        pipe.lpush("l", "x")
        pipe.execute()
    errors.append(multi.value)
    with pytest.raises(redis.RedisError) as script:
        client.eval("return redis.call('SET', KEYS[1], 'v')", 1, "s")
    errors.append(script.value)
    return errors


def test_a_full_redis_is_a_refusal_everywhere(own_redis: RedisServer) -> None:
    with redis.Redis.from_url(own_redis.url) as client:
        client.config_set("maxmemory", "1")
        assert [refusal_code(e) for e in refused(client)] == ["OOM"] * 3
        assert client.delete("k") == 0  # deleting is never refused: a full Redis still drains


def test_a_read_only_replica_is_a_refusal(own_redis: RedisServer) -> None:
    with redis.Redis.from_url(own_redis.url) as client:
        client.replicaof("127.0.0.1", free_port())  # a master that does not exist
        assert [refusal_code(e) for e in refused(client)] == ["READONLY"] * 3


def test_a_redis_that_cannot_persist_is_a_refusal(tmp_path: Path) -> None:
    """MISCONF arrives as a plain ResponseError: recognised by its code, in a pipeline too."""
    gone = tmp_path / "gone"
    gone.mkdir()
    # Refused only while snapshots are configured (the test servers run without).
    args = ("--dir", str(gone), "--save", "3600 1")
    with RedisServer(tmp_path / "redis", extra_args=args) as server:
        shutil.rmtree(gone)  # where its snapshot would go
        with redis.Redis.from_url(server.url) as client:
            client.bgsave()
            wait_until(
                lambda: client.info("persistence")["rdb_last_bgsave_status"] == "err",
                10,
                "the snapshot to fail",
            )
            assert [refusal_code(e) for e in refused(client)] == ["MISCONF"] * 3
        # Its SIGTERM shutdown would try a last snapshot into the missing directory, refuse to
        # exit and wait out STOP_TIMEOUT (15 s) before the SIGKILL: nothing here needs it kept.
        server.kill()


def test_a_busy_redis_is_a_refusal(own_redis: RedisServer) -> None:
    with (
        redis.Redis.from_url(own_redis.url) as client,
        redis.Redis.from_url(own_redis.url) as runner,
    ):
        client.config_set("busy-reply-threshold", 50)
        endless = runner.register_script("while true do end")

        def run_until_killed() -> None:
            with contextlib.suppress(redis.RedisError):
                endless()

        thread = threading.Thread(target=run_until_killed, daemon=True)
        thread.start()
        time.sleep(0.3)  # past the threshold: Redis answers BUSY meanwhile
        with pytest.raises(redis.ResponseError) as busy:
            client.get("k")
        client.script_kill()
        thread.join(10)
    assert refusal_code(busy.value) == "BUSY"
    assert is_transient(busy.value)


def test_other_error_replies_are_not_refusals(own_redis: RedisServer) -> None:
    with redis.Redis.from_url(own_redis.url) as client:
        client.lpush("a-list", "x")
        with pytest.raises(redis.ResponseError) as wrong_type:
            client.get("a-list")
    assert refusal_code(wrong_type.value) is None
    assert not is_transient(wrong_type.value)
    assert is_transient(redis.TimeoutError("no answer"))


def test_memory_is_read_as_redis_counts_it_when_refusing_writes(own_redis: RedisServer) -> None:
    with redis.Redis.from_url(own_redis.url) as client:
        client.config_set("maxmemory", 64 * 2**20)
        memory = RedisMemory.from_info(client.info("memory"))
    assert memory.maxmemory == 64 * 2**20
    assert 0 < memory.fraction < 0.5
    assert "of maxmemory 64.0 MiB" in memory.describe()
    assert RedisMemory(used=10, not_counted=0, maxmemory=0).fraction == 0.0
