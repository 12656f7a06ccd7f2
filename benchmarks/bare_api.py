"""The baseline for submit throughput: the least a FastAPI endpoint of the same shape can do.

It validates a tiny pydantic body and publishes with Celery's ``send_task`` to the same Redis,
in an ``async def`` handler (the faster of the two naive forms in BASELINES.md). No records, no
metrics, no tracing: whatever Courier adds on top is what the ratio measures.
"""

from __future__ import annotations

import os
import uuid

from celery import Celery
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, JsonValue

celery = Celery("bare", broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
app = FastAPI()


class NoopBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    echo: JsonValue = None
    sleep_seconds: float = 0.0


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/v1/tasks/noop", status_code=202)
async def submit(body: NoopBody) -> dict[str, str]:
    task_id = str(uuid.uuid4())
    celery.send_task("noop", kwargs=body.model_dump(), task_id=task_id)
    return {"id": task_id}
