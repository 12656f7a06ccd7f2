"""Image resizing with Pillow: pure functions on bytes, no Celery, no Redis."""

from __future__ import annotations

import io
import re
from typing import Literal

from PIL import Image, UnidentifiedImageError

from worker.core.errors import PermanentError

ImageFormat = Literal["PNG", "JPEG", "WEBP", "GIF"]
CONTENT_TYPES: dict[str, str] = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
    "GIF": "image/gif",
}


_OBJECT_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


def _without_reprs(message: str) -> str:
    """A message for users: no ``<... object at 0x...>``, which says nothing to them."""
    return _OBJECT_REPR.sub("the image", message).strip() or "unreadable data"


def resize_image(
    data: bytes, width: int, height: int, fmt: ImageFormat | None = None
) -> tuple[bytes, str]:
    """Resize to exactly ``width`` x ``height``; returns the encoded bytes and their format.

    The output keeps the source format unless ``fmt`` says otherwise (formats Pillow reads but
    does not write, such as BMP or TIFF, become PNG).
    """
    try:
        with Image.open(io.BytesIO(data)) as source:
            source.load()
            target = fmt or (source.format if source.format in CONTENT_TYPES else "PNG")
            resized = source.resize((width, height), Image.Resampling.LANCZOS)
    except UnidentifiedImageError:
        # Pillow's message names the buffer by its repr (<_io.BytesIO object at 0x...>).
        raise PermanentError(
            f"not a valid image: {len(data)} bytes in no image format the worker reads"
        ) from None
    except (Image.DecompressionBombError, OSError, SyntaxError) as exc:
        raise PermanentError(f"not a valid image: {_without_reprs(str(exc))}") from None
    if target == "JPEG" and resized.mode not in ("RGB", "L"):
        resized = resized.convert("RGB")
    out = io.BytesIO()
    resized.save(out, format=target)
    return out.getvalue(), target
