"""Upload -> process_image -> download; generate_report -> download; limits and bad bytes."""

from __future__ import annotations

import csv
import email.message
import io
import re
from collections.abc import Callable
from urllib.parse import unquote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from app.api.routes.artifacts import content_disposition
from tests.conftest import wait_for_status
from tests.utils.images import png_bytes


def upload(api: TestClient, data: bytes, name: str = "cat.png", ctype: str = "image/png") -> str:
    response = api.post("/v1/artifacts", files={"file": (name, data, ctype)})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["bytes"] == len(data)
    assert response.headers["Location"] == body["url"]
    return str(body["id"])


def test_uploaded_image_is_resized_by_the_worker_and_downloadable(
    live_api: TestClient, submit: Callable[..., str]
) -> None:
    image_id = upload(live_api, png_bytes((120, 80)))
    task_id = submit("process_image", {"image_id": image_id, "width": 30, "height": 20})
    done = wait_for_status(live_api, task_id)
    assert done["status"] == "succeeded", done
    result = done["result"]
    assert (result["width"], result["height"], result["format"]) == (30, 20, "PNG")

    download = live_api.get(f"/v1/artifacts/{result['artifact_id']}")
    assert download.status_code == 200
    assert download.headers["content-type"] == "image/png"
    assert 'filename="cat-30x20.png"' in download.headers["content-disposition"]
    with Image.open(io.BytesIO(download.content)) as image:
        assert image.size == (30, 20)


def test_invalid_image_bytes_fail_the_task_clearly_and_the_worker_keeps_serving(
    live_api: TestClient, submit: Callable[..., str]
) -> None:
    bad_id = upload(live_api, b"GIF89a but not really", "bad.gif", "image/gif")
    done = wait_for_status(
        live_api, submit("process_image", {"image_id": bad_id, "width": 5, "height": 5})
    )
    assert done["status"] == "failed"
    assert done["error"]["type"] == "PermanentError"
    assert "not a valid image" in done["error"]["message"]
    assert done["retries"] == 0
    follow_up = wait_for_status(live_api, submit("noop", {"echo": "still alive"}))
    assert follow_up["result"] == "still alive"


def test_missing_image_fails_with_a_clear_message(
    live_api: TestClient, submit: Callable[..., str]
) -> None:
    done = wait_for_status(
        live_api, submit("process_image", {"image_id": "0" * 32, "width": 5, "height": 5})
    )
    assert done["status"] == "failed"
    assert "does not exist or has expired" in done["error"]["message"]


def test_upload_over_the_size_limit_is_413(api: TestClient) -> None:
    response = api.post("/v1/artifacts", files={"file": ("big.bin", b"x" * (256 * 1024 + 1))})
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]


def test_unknown_artifact_is_404(api: TestClient) -> None:
    response = api.get(f"/v1/artifacts/{'a' * 32}")
    assert response.status_code == 404
    assert "expired" in response.json()["detail"]


def test_generated_report_is_a_downloadable_csv(
    live_api: TestClient, submit: Callable[..., str]
) -> None:
    rows = [{"item": "apples", "qty": 3}, {"item": "pears", "qty": 4}]
    done = wait_for_status(live_api, submit("generate_report", {"report_id": "r-1", "data": rows}))
    assert done["status"] == "succeeded"
    assert done["result"]["totals"] == {"qty": 7}
    download = live_api.get(f"/v1/artifacts/{done['result']['artifact_id']}")
    assert download.headers["content-type"].startswith("text/csv")
    assert list(csv.DictReader(io.StringIO(download.text))) == [
        {"item": "apples", "qty": "3"},
        {"item": "pears", "qty": "4"},
        {"item": "total", "qty": "7"},
    ]


def filename_of(content_disposition: str) -> str:
    """The name a client reads (RFC 6266): ``filename*`` (RFC 5987) when given, else
    ``filename`` (read by ``email.message``, which follows the quoting rules)."""
    extended = re.search(r"filename\*=([^']*)'[^']*'([^;\s]*)", content_disposition)
    if extended:
        charset, value = extended.groups()
        assert charset.lower() == "utf-8"
        assert re.fullmatch(r"[A-Za-z0-9!#$&+\-.^_`|~%]*", value), value  # attr-chars only
        return unquote(value, encoding="utf-8", errors="strict")
    message = email.message.Message()
    message["Content-Disposition"] = content_disposition
    name = message.get_filename()
    assert name is not None
    return name


def download_name(api: TestClient, filename: str) -> tuple[str, str]:
    """Upload under ``filename``; the name the API stored, and the one its download gives."""
    response = api.post("/v1/artifacts", files={"file": (filename, b"bytes", "image/png")})
    assert response.status_code == 201, response.text
    stored = response.json()["filename"]
    download = api.get(f"/v1/artifacts/{response.json()['id']}")
    assert download.status_code == 200
    header = download.headers.get("content-disposition")
    if not stored:
        assert header is None
        return stored, ""
    assert header is not None and header.startswith("attachment; ")
    header.encode("ascii")  # every byte of it: no raw name in the header
    plain = re.search(r'filename="((?:[^"\\]|\\.)*)"', header)
    assert plain, header  # the ASCII fallback for clients that do not read filename*
    return stored, filename_of(header)


@pytest.mark.parametrize(
    "filename",
    ["文件.png", "résumé.png", "back\\slash.png", "semi;colon, comma.png", "🚀.png"],
)
def test_a_download_gives_back_any_filename(api: TestClient, filename: str) -> None:
    assert download_name(api, filename) == (filename, filename)


def test_a_plain_filename_is_sent_as_is(api: TestClient) -> None:
    response = api.post("/v1/artifacts", files={"file": ("cat.png", b"x", "image/png")})
    download = api.get(f"/v1/artifacts/{response.json()['id']}")
    assert download.headers["content-disposition"] == 'attachment; filename="cat.png"'


def test_the_fallback_of_a_non_ascii_name_is_readable_ascii(api: TestClient) -> None:
    response = api.post("/v1/artifacts", files={"file": ("résumé.png", b"x", "image/png")})
    header = api.get(f"/v1/artifacts/{response.json()['id']}").headers["content-disposition"]
    assert 'filename="resume.png"' in header


@given(st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40))
@example(" ").via("found by hypothesis: the quoted blank came back empty")
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_any_stored_filename_downloads_under_the_same_name(api: TestClient, filename: str) -> None:
    stored, downloaded = download_name(api, filename)
    assert downloaded == stored


@given(st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40))
def test_any_name_reads_back_from_its_content_disposition(filename: str) -> None:
    # Quotes and line breaks reach no stored name through multipart (clients send %22, %0A).
    header = content_disposition(filename)
    header.encode("ascii")
    assert filename_of(header) == filename
