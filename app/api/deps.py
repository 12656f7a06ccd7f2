"""Dependencies, declared once as ``Annotated`` aliases; the objects live on ``app.state``.

They are ``async`` only so FastAPI does not hop to a thread just to read an attribute.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis as AsyncRedis

from app.queue import TaskQueue
from app.users import UserStore
from worker.core.artifacts import ArtifactCalls
from worker.core.settings import Settings


async def app_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_redis(request: Request) -> AsyncRedis:
    return request.app.state.redis  # type: ignore[no-any-return]


async def get_queue(request: Request) -> TaskQueue:
    return request.app.state.queue  # type: ignore[no-any-return]


async def get_artifacts(request: Request) -> ArtifactCalls:
    return request.app.state.artifacts  # type: ignore[no-any-return]


async def get_users(request: Request) -> UserStore:
    return request.app.state.users  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(app_settings)]
RedisDep = Annotated[AsyncRedis, Depends(get_redis)]
QueueDep = Annotated[TaskQueue, Depends(get_queue)]
ArtifactsDep = Annotated[ArtifactCalls, Depends(get_artifacts)]
UsersDep = Annotated[UserStore, Depends(get_users)]
