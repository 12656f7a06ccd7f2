"""/v1/artifacts: upload bytes for a task (e.g. an image to resize), download task outputs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Path, Request, Response, UploadFile

from app.api.deps import ArtifactsDep, SettingsDep
from app.api.errors import PROTECTED_ERRORS, PayloadTooLarge, error_responses
from app.api.schemas import ArtifactOut
from app.api.security import client_identity

router = APIRouter(
    prefix="/v1/artifacts",
    tags=["artifacts"],
    dependencies=[Depends(client_identity)],
    responses=PROTECTED_ERRORS,
)

ArtifactId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]


@router.post(
    "",
    status_code=201,
    summary="Upload a file (multipart field 'file'); it is kept for COURIER_ARTIFACT_TTL seconds",
    responses=error_responses(413),
)
def upload_artifact(
    file: Annotated[UploadFile, File(description="The file to store.")],
    request: Request,
    response: Response,
    artifacts: ArtifactsDep,
    settings: SettingsDep,
) -> ArtifactOut:
    data = file.file.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise PayloadTooLarge(f"file exceeds the limit of {settings.max_upload_bytes} bytes")
    content_type = file.content_type or "application/octet-stream"
    filename = file.filename or ""
    artifact_id = artifacts.put(data, content_type, filename)
    url = str(request.url_for("download_artifact", artifact_id=artifact_id))
    response.headers["Location"] = url
    return ArtifactOut(
        id=artifact_id, filename=filename, content_type=content_type, bytes=len(data), url=url
    )


@router.get(
    "/{artifact_id}",
    name="download_artifact",
    summary="Download an artifact (an upload, a resized image, a report)",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}, **error_responses(404)},
)
def download_artifact(artifact_id: ArtifactId, artifacts: ArtifactsDep) -> Response:
    artifact = artifacts.get(artifact_id)
    headers = {}
    if artifact.filename:
        headers["Content-Disposition"] = f'attachment; filename="{artifact.filename}"'
    return Response(artifact.data, media_type=artifact.content_type, headers=headers)
