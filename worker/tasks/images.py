"""``process_image``: resize an uploaded image artifact; the result is a new artifact."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from worker.core.artifacts import ArtifactNotFound
from worker.core.errors import PermanentError
from worker.core.names import PROCESS_IMAGE_TASK
from worker.handlers.images import CONTENT_TYPES, ImageFormat, resize_image
from worker.registry import TaskContext, task

ARTIFACT_ID_PATTERN = r"^[0-9a-f]{32}$"


class ProcessImagePayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_id: str = Field(
        ..., pattern=ARTIFACT_ID_PATTERN, description="Artifact id returned by POST /v1/artifacts."
    )
    width: int = Field(..., ge=1, le=10_000)
    height: int = Field(..., ge=1, le=10_000)
    format: ImageFormat | None = Field(None, description="Output format; default: the source's.")


@task(name=PROCESS_IMAGE_TASK, payload=ProcessImagePayload)
def process_image(payload: ProcessImagePayload, ctx: TaskContext) -> dict[str, Any]:
    """Resize an uploaded image to width x height; download the result from its artifact id."""
    try:
        source = ctx.artifacts.get(payload.image_id)
    except ArtifactNotFound as exc:
        raise PermanentError(str(exc)) from None
    data, fmt = resize_image(source.data, payload.width, payload.height, payload.format)
    stem = source.filename.rsplit(".", 1)[0] or "image"
    filename = f"{stem}-{payload.width}x{payload.height}.{fmt.lower()}"
    artifact_id = ctx.artifacts.put(data, CONTENT_TYPES[fmt], filename)
    return {
        "artifact_id": artifact_id,
        "width": payload.width,
        "height": payload.height,
        "format": fmt,
        "bytes": len(data),
    }
