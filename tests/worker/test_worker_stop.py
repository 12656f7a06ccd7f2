"""An idle worker exits promptly on SIGTERM, with status 0, in both pools.

A stop used to take 1.5-2.5 s on an idle worker (measured with py-spy and the DEBUG log's
bootstep lines): in the inline pool ~0.85 s of it was the revoke listener's thread waiting out
its 1 s wait for a broadcast before the pool's stop could join it. The listener is now woken at
once. The test makes that wait a minute long (``long_listener_worker``): a stop that still
waited it out would take a minute, so the bound below separates the two whatever the load.
Warm shutdown, a running task finished before the exit, is tested with each pool elsewhere
(test_inline_pool, reliability/test_chaos).
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

from tests.utils.processes import POOLS, RedisServer, celery_worker, courier_env, wait_until

# Seconds an idle worker may take from SIGTERM to its exit: ~0.7 s (inline) and ~2 s (prefork,
# whose children each wait 1 s in billiard before they exit) on a quiet machine, with room for
# a loaded one; far below the minute a listener's wait that was not woken would add.
STOP_BOUND = 10.0
LONG_LISTENER = "--include=tests.worker.long_listener_worker"


def subscribers(client: redis.Redis) -> int:
    """Clients subscribed to a pub/sub channel: the consumer's broadcast mailbox, and the
    inline pool's revoke listener once its wait is under way."""
    clients: list[dict[str, str]] = client.client_list()
    return sum(1 for c in clients if int(c.get("sub", 0)) + int(c.get("psub", 0)))


@pytest.mark.parametrize("pool", POOLS)
def test_an_idle_worker_exits_promptly_on_sigterm_with_status_0(pool: str, tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url)
        log = tmp_path / "worker.log"
        env = courier_env({"COURIER_REDIS_URL": server.url})
        with celery_worker(env, log, f"stop-{pool}", extra_args=(LONG_LISTENER,), pool=pool) as w:
            wait_until(lambda: " ready." in w.output(), 60, "the worker to be ready")
            # The inline pool's listener is blocked in its wait; prefork has none.
            expected = 2 if pool == "inline" else 1
            wait_until(lambda: subscribers(client) >= expected, 30, f"{expected} subscriber(s)")
            started = time.monotonic()
            w.process.send_signal(signal.SIGTERM)
            try:
                status = w.process.wait(STOP_BOUND)
            except subprocess.TimeoutExpired:
                pytest.fail(f"still running {STOP_BOUND} s after SIGTERM:\n{w.output()[-3000:]}")
            took = time.monotonic() - started
        client.close()
    assert status == 0, w.output()[-3000:]
    assert "Traceback" not in w.output()
    print(f"{pool}: exited {took:.2f} s after SIGTERM")
