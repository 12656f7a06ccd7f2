"""/healthz (the process answers) and /readyz (Redis answers within a second and takes submits)."""

from __future__ import annotations

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import RedisDep, SettingsDep
from app.memory_watermark import RedisFull, check_watermark, read_memory

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process is serving")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _unavailable(detail: str) -> JSONResponse:
    return JSONResponse(status_code=503, content={"status": "unavailable", "detail": detail})


@router.get(
    "/readyz",
    summary="Readiness: Redis is reachable and below its memory high watermark",
    responses={503: {"description": "Redis unreachable, or full: the detail says which"}},
)
async def readyz(client: RedisDep, settings: SettingsDep) -> JSONResponse:
    try:
        # A fresh reading, unlike submits' cached one: a probe comes every few seconds.
        memory = await read_memory(client)
        check_watermark(memory, settings.redis_memory_high_watermark)
    except RedisFull as exc:
        return _unavailable(str(exc))
    except redis.RedisError as exc:
        return _unavailable(f"Redis: {type(exc).__name__}: {exc}")
    return JSONResponse({"status": "ready"})
