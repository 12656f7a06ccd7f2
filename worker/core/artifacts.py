"""Binary artifacts (uploads and task outputs) held in Redis with a TTL.

API and worker run in separate pods with no shared disk; Redis is the one store both already
reach, and a TTL bounds its memory. Artifacts are capped by ``COURIER_MAX_UPLOAD_BYTES``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import redis

from worker.core.names import ARTIFACT_KEY
from worker.core.redis_calls import Call


@dataclass(frozen=True)
class Artifact:
    artifact_id: str
    data: bytes
    content_type: str
    filename: str


class ArtifactNotFound(LookupError):
    """The artifact never existed or its TTL ran out."""


def _key(artifact_id: str) -> str:
    return ARTIFACT_KEY.format(artifact_id=artifact_id)


class ArtifactCalls:
    """What each operation sends and how its reply reads (``redis_calls``): the worker's
    ``ArtifactStore`` runs them on its blocking client, the API on its asyncio one."""

    def __init__(self, ttl: int) -> None:
        self.ttl = ttl

    def put(self, data: bytes, content_type: str, filename: str = "") -> Call[str]:
        """Store an artifact under a new id, which the call returns."""
        artifact_id = uuid.uuid4().hex
        fields = {"data": data, "content_type": content_type, "filename": filename}
        key = _key(artifact_id)
        commands = [("hset", (key, None, None, fields)), ("expire", (key, self.ttl))]
        return Call(lambda _: artifact_id, commands=commands)

    @staticmethod
    def get(artifact_id: str) -> Call[Artifact]:
        def parse(raw: dict[bytes, bytes]) -> Artifact:
            if not raw:
                raise ArtifactNotFound(f"artifact {artifact_id!r} does not exist or has expired")
            return Artifact(
                artifact_id=artifact_id,
                data=raw[b"data"],
                content_type=raw.get(b"content_type", b"application/octet-stream").decode(),
                filename=raw.get(b"filename", b"").decode(),
            )

        # Not in a transaction: an artifact stays readable while a full Redis drains.
        return Call(parse, command=("hgetall", (_key(artifact_id),)))


class ArtifactStore:
    """Artifacts on a blocking client (the worker's tasks read and write them)."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self._redis = client
        self.calls = ArtifactCalls(ttl)

    def put(self, data: bytes, content_type: str, filename: str = "") -> str:
        return self.calls.put(data, content_type, filename).run(self._redis)

    def get(self, artifact_id: str) -> Artifact:
        return self.calls.get(artifact_id).run(self._redis)
