from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.utils.images import png_bytes
from worker.core.errors import PermanentError
from worker.handlers.images import resize_image


def test_resize_keeps_the_source_format_by_default() -> None:
    data, fmt = resize_image(png_bytes((64, 48)), 16, 12)
    assert fmt == "PNG"
    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.size) == ("PNG", (16, 12))


def test_resize_to_jpeg_drops_the_alpha_channel() -> None:
    data, fmt = resize_image(png_bytes((20, 20)), 10, 5, "JPEG")
    with Image.open(io.BytesIO(data)) as image:
        assert (fmt, image.format, image.mode, image.size) == ("JPEG", "JPEG", "RGB", (10, 5))


def test_garbage_bytes_are_a_permanent_error() -> None:
    with pytest.raises(PermanentError, match="not a valid image"):
        resize_image(b"definitely not an image", 10, 10)


def test_truncated_image_is_a_permanent_error() -> None:
    with pytest.raises(PermanentError, match="not a valid image"):
        resize_image(png_bytes((200, 200))[:60], 10, 10)


@pytest.mark.parametrize(
    "data",
    [b"definitely not an image", b"GIF89a" + b"\x00" * 20, b"BM" + b"\x00" * 40, b""],
    ids=["text", "gif-header-only", "bmp-header-only", "empty"],
)
def test_an_unreadable_upload_is_reported_without_object_reprs(data: bytes) -> None:
    with pytest.raises(PermanentError) as error:
        resize_image(data, 10, 10)
    message = str(error.value)
    assert message.startswith("not a valid image: ")
    assert "object at 0x" not in message and "<" not in message, message
