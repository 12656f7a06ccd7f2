"""Light, loss-tolerant work run as FastAPI BackgroundTasks after the response is sent.

A failure here is logged, never raised: the client already has its answer, and these jobs
(an audit entry, a welcome email) are not worth a retry queue.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis
from redis.asyncio import Redis as AsyncRedis

from worker.backends.email import send_email
from worker.core.names import AUDIT_LOG_KEY, AUDIT_LOG_MAX_ENTRIES
from worker.core.settings import Settings

logger = logging.getLogger("courier.audit")


async def write_audit_log(client: AsyncRedis, action: str, **details: Any) -> None:
    entry = {"ts": time.time(), "action": action, **details}
    try:
        pipe = client.pipeline(transaction=False)
        pipe.lpush(AUDIT_LOG_KEY, json.dumps(entry))
        pipe.ltrim(AUDIT_LOG_KEY, 0, AUDIT_LOG_MAX_ENTRIES - 1)
        await pipe.execute()
        logger.info("audit", extra={"action": action, **details})
    except redis.RedisError:
        logger.exception("audit log entry lost", extra={"action": action, **details})


def send_welcome_email(settings: Settings, username: str, email: str) -> None:
    try:
        send_email(settings, email, "Welcome to Courier", f"Hello {username}, welcome aboard!")
    except Exception:
        logger.exception("welcome email not sent", extra={"username": username})
