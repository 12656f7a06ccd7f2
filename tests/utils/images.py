"""Small real images for the tests that upload, resize or download one."""

from __future__ import annotations

import io

from PIL import Image


def png_bytes(size: tuple[int, int], mode: str = "RGBA") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, (10, 20, 30, 255)[: len(mode)]).save(out, format="PNG")
    return out.getvalue()
