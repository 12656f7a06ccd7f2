"""``reconcile_records``: the periodic task beat runs every COURIER_RECONCILE_INTERVAL_SECONDS."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pydantic import BaseModel, ConfigDict

from worker.celery_config import PRIORITY_STEPS, restore_interval
from worker.core.names import RECONCILE_TASK
from worker.core.reconcile import Reconciler
from worker.registry import TaskContext, registered_tasks, task


class ReconcilePayload(BaseModel):
    model_config = ConfigDict(extra="forbid")


@task(name=RECONCILE_TASK, payload=ReconcilePayload)
def reconcile_records(payload: ReconcilePayload, ctx: TaskContext) -> dict[str, Any]:
    """Fail queued tasks whose message vanished from Redis (a purge, a deleted list) with
    MessageLost, then stamp the run time (beat liveness)."""
    settings = ctx.settings
    timeout = settings.broker_visibility_timeout
    reconciler = Reconciler(
        ctx.records,
        ctx.backend,
        PRIORITY_STEPS,
        stale_after=timeout + restore_interval(timeout),
        known_tasks=registered_tasks(),
        known_queues=settings.queues,
    )
    return asdict(reconciler.run())
