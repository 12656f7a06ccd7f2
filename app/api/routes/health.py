"""/healthz (the process answers) and /readyz (Redis answers within a second)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import RedisDep
from worker.core.redis_client import REDIS_ERRORS

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process is serving")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: Redis is reachable",
    responses={503: {"description": "Redis unreachable"}},
)
def readyz(client: RedisDep) -> JSONResponse:
    try:
        client.ping()
    except REDIS_ERRORS as exc:
        return JSONResponse(
            status_code=503, content={"status": "unavailable", "detail": f"Redis: {exc}"}
        )
    return JSONResponse({"status": "ready"})
