"""``noop``: sleeps, then returns ``echo``: the workhorse of tests, benchmarks, fault injection."""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from worker.core.names import NOOP_TASK
from worker.registry import TaskContext, task


class NoopPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    echo: JsonValue = Field(None, description="Returned unchanged as the task's result.")
    sleep_seconds: float = Field(0.0, ge=0, le=86400, description="How long the task sleeps.")


@task(name=NOOP_TASK, payload=NoopPayload)
def noop(payload: NoopPayload, ctx: TaskContext) -> JsonValue:
    """Sleep ``sleep_seconds``, then return ``echo``."""
    if payload.sleep_seconds:
        time.sleep(payload.sleep_seconds)
    return payload.echo
