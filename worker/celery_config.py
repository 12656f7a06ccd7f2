"""The Celery app, built from settings (``celery -A worker.celery_app worker``). No task code here.

Why each setting is what it is, in short (docs/celery.md says more):
- JSON only: a message is data any producer can write, never code the worker unpickles.
- ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged after the task
  ran, so a task whose worker dies is redelivered (at-least-once), not silently dropped.
- ``broker_transport``: Courier's own (``worker/transport``): kombu's Redis transport with a
  fetch that takes a message off its list and records it as unacknowledged in one atomic step;
  with Sentinel, the same transport on a Sentinel-managed pool, and the same result backend.
- ``visibility_timeout``: how long a delivered, unacknowledged message waits before kombu gives it
  to another worker; the restore sweep is tied to it (kombu's default sweeps every ~100 s).
- ``health_check_interval`` + TCP keepalive: a consumer connection whose reply is overdue, or
  whose peer stopped answering keepalive probes, is dropped and made again within seconds.
- ``result_extended``: status shows worker, retries; STARTED is stored by the runner's start
  stamp (one round trip with the record), so Celery's own ``task_track_started`` is off.
- ``worker_prefetch_multiplier``: small, so one worker does not hoard a burst others could run.
- ``carry_results`` (transport option, inline pool only): a task's final state rides in the call
  that acknowledges it (``worker/core/result_carry.py``), one script call per task.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, current_app, states
from kombu import Queue

from worker import lifecycle
from worker.core.dead_letters import Connect, DeadLetterScreen
from worker.core.envelope import Checked
from worker.core.errors import DeadLettered
from worker.core.names import RECONCILE_TASK
from worker.core.redis_client import TCP_KEEPALIVE_OPTIONS, sentinel_options
from worker.core.result_backend import backend_url
from worker.core.settings import Settings, SettingsError, get_settings
from worker.registry import registered_tasks
from worker.runner import WorkerResources, bind_task
from worker.transport.stamp import StartStamp

# Redis priorities: 0 is the highest; each step is its own list in Redis.
PRIORITY_STEPS = [0, 3, 6, 9]
TRANSPORT = "worker.transport:Transport"
# Celery's worker_pool per COURIER_WORKER_POOL. A path, not a class: ``celery worker --pool``
# takes only Celery's names, and replaces its default "prefork" by this setting.
POOLS = {"prefork": "prefork", "inline": "worker.pool:TaskPool"}
SENTINEL_TRANSPORT = "worker.transport:SentinelTransport"
# A consumer's reply overdue by this many seconds means a dead link (a peek answers within its
# own timeout, a fetch at once): the connection is dropped and made again. redis-py also PINGs a
# pooled broker connection idle for longer before using it: at most one PING per 2 s each.
BROKER_HEALTH_CHECK_SECONDS = 2


def restore_interval(visibility_timeout: int) -> int:
    """Sweep for abandoned messages often enough that one is back within ~1.1 timeouts."""
    return max(1, min(60, visibility_timeout // 10))


def sweep_lock_expiry(visibility_timeout: int) -> int:
    """How long a sweep's lock lives if its holder never releases it: two sweep intervals.

    kombu's default is 300 s, and a lock is orphaned more often than a crash suggests: a
    worker killed mid-sweep, or a failover that carries the lock's SET to the new primary but
    not its release (sent to the old one, lost at its resync; seen in CI after a planned
    failover). Every sweep then stops for the lock's life, so no abandoned message comes back.
    A short life is safe: a sweep takes milliseconds, and two sweeps that overlap restore each
    message once (each restore is a WATCHed transaction on ``unacked``)."""
    return 2 * restore_interval(visibility_timeout)


def celery_config(settings: Settings) -> dict[str, Any]:
    transport_timeouts = {
        "socket_timeout": settings.redis_socket_timeout,
        "socket_connect_timeout": settings.redis_connect_timeout,
    }
    # Where the primary is, when Sentinel says (the URL then gives db, password and TLS only).
    sentinel = sentinel_options(settings)
    sentinel_options_only = {"sentinel": sentinel} if sentinel else {}
    return {
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # STARTED is stored by the runner's start stamp, in the round trip it makes anyway.
        "task_track_started": False,
        "result_extended": True,
        "result_expires": settings.result_expires,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": settings.worker_prefetch_multiplier,
        "worker_pool": POOLS[settings.worker_pool],
        "broker_transport": SENTINEL_TRANSPORT if sentinel else TRANSPORT,
        "broker_transport_options": {
            "visibility_timeout": settings.broker_visibility_timeout,
            "unacked_restore_interval": restore_interval(settings.broker_visibility_timeout),
            "unacked_restore_throttle": 1,
            "unacked_mutex_expire": sweep_lock_expiry(settings.broker_visibility_timeout),
            "priority_steps": PRIORITY_STEPS,
            "queue_order_strategy": "priority",
            "health_check_interval": BROKER_HEALTH_CHECK_SECONDS,
            "message_screen": f"{__name__}:screen_message",
            "start_stamp": f"{__name__}:start_stamp",
            # The inline pool's tasks run in the consumer's thread: their final states ride
            # in the call that carries their acknowledgement (worker/core/result_carry.py).
            "carry_results": settings.worker_pool == "inline",
            "socket_keepalive": True,
            "socket_keepalive_options": TCP_KEEPALIVE_OPTIONS,
            **transport_timeouts,
            **sentinel_options_only,
        },
        "result_backend_transport_options": sentinel_options_only,
        "redis_socket_timeout": settings.redis_socket_timeout,
        "redis_socket_connect_timeout": settings.redis_connect_timeout,
        "redis_retry_on_timeout": True,
        "broker_connection_retry_on_startup": True,
        # Tasks running when the broker connection drops complete; if their acknowledgement is
        # lost with the old connection, the message returns after the visibility timeout and
        # the runner skips it as a finished duplicate.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "broker_connection_max_retries": None,
        # Reconnects every second, not kombu's 2..30 s backoff (worker/consumer.py says why).
        "worker_consumer": "worker.consumer:Consumer",
        "broker_connection_timeout": settings.redis_connect_timeout,
        # A publish to an unreachable Redis gives up within about a second (the API answers 503).
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.3,
        },
        "task_default_queue": settings.default_queue,
        "task_queues": [Queue(name) for name in settings.queues],
        "task_default_priority": None,
        "task_soft_time_limit": settings.task_soft_time_limit,
        "task_time_limit": settings.task_time_limit,
        "worker_send_task_events": settings.task_events,
        # No task-sent event: it costs every submission a second publish (1.28x submit
        # throughput when off, make bench); Flower lists tasks from "received" on, and
        # celery_task_sent_total is counted by the producer itself.
        "task_send_sent_event": False,
        "worker_hijack_root_logger": False,
        "beat_schedule": {
            RECONCILE_TASK: {
                "task": RECONCILE_TASK,
                "schedule": settings.reconcile_interval_seconds,
            },
        },
        "beat_schedule_filename": settings.beat_schedule_file,
    }


def create_celery_app(settings: Settings) -> Celery:
    backend = backend_url(settings.redis_url, sentinel=settings.uses_sentinel)
    # Celery's control with one reply per command from an inline worker (worker/pool/mailbox.py).
    app = Celery(
        "courier", broker=settings.redis_url, backend=backend, control="worker.pool.mailbox:Control"
    )
    app.conf.update(celery_config(settings))
    resources = WorkerResources(settings)
    specs = registered_tasks()
    unknown = sorted(set(settings.task_time_limits) - set(specs))
    if unknown:
        raise SettingsError(
            f"invalid Courier settings:\n  COURIER_TASK_TIME_LIMITS: unknown task(s) {unknown}"
        )
    for spec in specs.values():
        bind_task(app, spec, resources)
    lifecycle.connect(app, lambda: resources.records, settings, specs)
    app.courier_screen = dead_letter_screen(app, settings)  # type: ignore[attr-defined]
    return app


def start_stamp() -> StartStamp | None:
    """The transport's ``start_stamp``: set in a worker that hands each message to an idle
    pool process as it takes it (``worker/transport/stamp.py``), else None. Named by its path
    for the same reason as ``screen_message``."""
    stamp: StartStamp | None = getattr(current_app, "courier_start_stamp", None)
    return stamp


def screen_message(
    connect: Connect, raw: bytes, queue: str, *, source: str | None, delivery_tag: str | None
) -> Checked | None:
    """The transport's ``message_screen``: the screen of the app this worker runs. Named by
    its path, not given as the object, because ``celery inspect conf``, ``stats`` and Flower
    serialize the transport options to JSON."""
    app: Any = current_app
    screen = getattr(app, "courier_screen", None)
    if screen is None:  # an app built without create_celery_app: from the environment
        screen = app.courier_screen = dead_letter_screen(app, get_settings())
    result: Checked | None = screen(connect, raw, queue, source=source, delivery_tag=delivery_tag)
    return result


def dead_letter_screen(app: Celery, settings: Settings) -> DeadLetterScreen:
    """What the transport runs on every task message before Celery sees it."""

    def failure(task_id: str, detail: str) -> bytes | str:
        backend: Any = app.backend  # celery-types lacks prepare_exception
        error = backend.prepare_exception(DeadLettered(f"dead-lettered: {detail}"))
        encoded: bytes | str = backend.encode_meta(task_id, error, states.FAILURE)
        return encoded

    return DeadLetterScreen(
        settings.dead_letter_max,
        settings.dead_letter_max_bytes,
        tasks=lambda: app.tasks.keys(),
        failure=failure,
        result_ttl=settings.result_expires,
    )
