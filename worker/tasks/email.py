"""``send_email``: one message through the configured backend, retried on transient failures."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, EmailStr, Field

from worker.backends.email import send_email as deliver
from worker.core.names import SEND_EMAIL_TASK
from worker.registry import TaskContext, task

EMAIL_MAX_RETRIES = 3


class SendEmailPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: EmailStr
    subject: str = Field(..., min_length=1, max_length=998)
    body: str = Field("", max_length=1_000_000)


# deliver() raises TransientError for network errors and 4xx replies: retried by the runner.
@task(name=SEND_EMAIL_TASK, payload=SendEmailPayload, max_retries=EMAIL_MAX_RETRIES)
def send_email(payload: SendEmailPayload, ctx: TaskContext) -> dict[str, Any]:
    """Send an email; network errors and 4xx replies are retried 3 times with backoff."""
    message_id = deliver(ctx.settings, str(payload.to), payload.subject, payload.body)
    return {"to": str(payload.to), "message_id": message_id, "backend": ctx.settings.email_backend}
