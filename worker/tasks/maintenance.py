"""``cleanup_artifacts``: the periodic task beat runs every COURIER_CLEANUP_INTERVAL_SECONDS."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from worker.core.names import CLEANUP_TASK
from worker.registry import TaskContext, task


class CleanupPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")


@task(name=CLEANUP_TASK, payload=CleanupPayload)
def cleanup_artifacts(payload: CleanupPayload, ctx: TaskContext) -> dict[str, Any]:
    """Drop expired artifacts from the artifact index and stamp the run time (beat liveness)."""
    removed = ctx.artifacts.prune_index()
    return {"removed": removed, "remaining": ctx.artifacts.count()}
