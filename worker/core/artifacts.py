"""Binary artifacts (uploads and task outputs) held in Redis with a TTL.

API and worker run in separate pods with no shared disk; Redis is the one store both already
reach, and a TTL bounds its memory. Artifacts are capped by ``COURIER_MAX_UPLOAD_BYTES``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import cast

import redis

from worker.core.names import ARTIFACT_KEY


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


class ArtifactStore:
    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self._redis = client
        self._ttl = ttl

    def put(self, data: bytes, content_type: str, filename: str = "") -> str:
        artifact_id = uuid.uuid4().hex
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(
            _key(artifact_id),
            mapping={"data": data, "content_type": content_type, "filename": filename},
        )
        pipe.expire(_key(artifact_id), self._ttl)
        pipe.execute()
        return artifact_id

    def get(self, artifact_id: str) -> Artifact:
        raw = cast(dict[bytes, bytes], self._redis.hgetall(_key(artifact_id)))
        if not raw:
            raise ArtifactNotFound(f"artifact {artifact_id!r} does not exist or has expired")
        return Artifact(
            artifact_id=artifact_id,
            data=raw[b"data"],
            content_type=raw.get(b"content_type", b"application/octet-stream").decode(),
            filename=raw.get(b"filename", b"").decode(),
        )
