"""Upload -> process_image -> download; generate_report -> download; limits and bad bytes."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable

from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import wait_for_status
from tests.worker.handlers.test_images import png_bytes


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
    assert done["result"]["totals"] == {"qty": 7.0}
    download = live_api.get(f"/v1/artifacts/{done['result']['artifact_id']}")
    assert download.headers["content-type"].startswith("text/csv")
    assert list(csv.DictReader(io.StringIO(download.text))) == [
        {"item": "apples", "qty": "3"},
        {"item": "pears", "qty": "4"},
    ]
