"""/v1/artifacts: upload bytes for a task (e.g. an image to resize), download task outputs."""

from __future__ import annotations

import unicodedata
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, File, Path, Request, Response, UploadFile

from app.api.deps import ArtifactsDep, RedisDep, SettingsDep
from app.api.errors import PROTECTED_ERRORS, PayloadTooLarge, error_responses
from app.api.schemas import ArtifactOut
from app.api.security import client_identity

router = APIRouter(
    prefix="/v1/artifacts",
    tags=["artifacts"],
    dependencies=[Depends(client_identity)],
    responses=PROTECTED_ERRORS,
)

# RFC 5987 attr-char, beyond the letters, digits and "_.-~" that quote() never encodes.
ATTR_CHARS = "!#$&+^`|"
ArtifactId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]


@router.post(
    "",
    status_code=201,
    summary="Upload a file (multipart field 'file'); it is kept for COURIER_ARTIFACT_TTL seconds",
    responses=error_responses(413),
)
async def upload_artifact(
    file: Annotated[UploadFile, File(description="The file to store.")],
    request: Request,
    response: Response,
    artifacts: ArtifactsDep,
    client: RedisDep,
    settings: SettingsDep,
) -> ArtifactOut:
    data = await file.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise PayloadTooLarge(f"file exceeds the limit of {settings.max_upload_bytes} bytes")
    content_type = file.content_type or "application/octet-stream"
    filename = file.filename or ""
    artifact_id = await artifacts.put(data, content_type, filename).run_async(client)
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
async def download_artifact(
    artifact_id: ArtifactId, artifacts: ArtifactsDep, client: RedisDep
) -> Response:
    artifact = await artifacts.get(artifact_id).run_async(client)
    headers = {}
    if artifact.filename:
        headers["Content-Disposition"] = content_disposition(artifact.filename)
    return Response(artifact.data, media_type=artifact.content_type, headers=headers)


def _ascii_fallback(filename: str) -> str:
    """The name for clients that only read ``filename``: accents dropped (résumé -> resume),
    other non-ASCII and control characters as ``_``, quotes and backslashes escaped."""
    decomposed = unicodedata.normalize("NFKD", filename)
    plain = "".join(
        c if " " <= c <= "~" else "_" for c in decomposed if not unicodedata.combining(c)
    )
    return plain.replace("\\", "\\\\").replace('"', '\\"')


def content_disposition(filename: str) -> str:
    """``attachment`` under ``filename`` as RFC 6266 says: a quoted ``filename`` in ASCII,
    and when that is not the name itself, ``filename*`` (RFC 5987: UTF-8, percent-encoded),
    which clients prefer. A header is Latin-1 at best: the raw name (文件.png) was a 500."""
    fallback = _ascii_fallback(filename)
    header = f'attachment; filename="{fallback}"'
    # Parsers strip blanks around a quoted value: a name with them needs filename* too.
    if fallback != filename or filename != filename.strip():
        header += f"; filename*=UTF-8''{quote(filename, safe=ATTR_CHARS)}"
    return header
