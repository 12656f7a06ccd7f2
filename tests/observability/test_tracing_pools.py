"""Workers whose pool does not fork (solo, threads, Courier's inline) trace their tasks too,
and nothing else.

The SDK starts in each prefork child (``worker_process_init``); a pool without children runs
the tasks in the main process, which must then start it itself. That process also consumes
from the broker: its Redis housekeeping must not become traces of its own. The task is sent
as an upstream producer would, with a W3C ``traceparent`` in the message headers.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.utils.otlp import OtlpReceiver
from tests.utils.processes import RedisServer, celery_worker, courier_env, wait_until
from worker.celery_config import create_celery_app
from worker.core.names import DEFAULT_QUEUE
from worker.core.settings import Settings


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver()
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("pool", ["solo", "threads", "inline"])
def test_a_worker_without_children_traces_its_tasks(
    pool: str, tmp_path: Path, own_redis: RedisServer, receiver: OtlpReceiver
) -> None:
    env = courier_env(
        {
            "COURIER_REDIS_URL": own_redis.url,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
    )
    # Courier's inline pool is chosen by its setting (celery's --pool takes Celery's names only).
    options = {"pool": pool} if pool == "inline" else {"extra_args": (f"--pool={pool}",)}
    worker = celery_worker(env, tmp_path / "worker.log", pool, **options)
    app = create_celery_app(Settings(redis_url=own_redis.url))
    try:
        wait_until(lambda: " ready." in worker.output(), 30, f"the {pool} worker")
        trace_id, parent = f"{random.getrandbits(128):032x}", f"{random.getrandbits(64):016x}"
        result = app.send_task(
            "noop",
            kwargs={"echo": pool},
            queue=DEFAULT_QUEUE,
            headers={"traceparent": f"00-{trace_id}-{parent}-01"},
        )
        receiver.wait_for(trace_id, "run/noop")
        spans = receiver.trace(trace_id)
        (consumer,) = [s for s in spans if s.name == "run/noop"]
        assert (consumer.service, consumer.parent_id) == ("courier-worker", parent)
        if pool == "inline":
            # Its final state is written by the broker call carrying its acknowledgement
            # (worker/core/result_carry.py), after its span: the task made no Redis call.
            assert result.get(timeout=10) == pool
        else:
            wait_until(
                lambda: any(s.kind == "client" for s in receiver.trace(trace_id)),
                10,
                "the result write's Redis span",
            )
        # Polling, acknowledging, heartbeats: Redis commands outside the task, no trace.
        assert receiver.trace_ids() == {trace_id}
    finally:
        app.close()
        worker.stop()
