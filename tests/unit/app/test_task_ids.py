"""Task ids and the ``Location`` of a submit: made faster than Starlette and ``uuid`` make
them, with the same results."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from starlette.requests import Request

from app.api.routes.tasks import task_url
from app.queue import new_task_id


def test_a_task_id_is_a_random_uuid4_in_its_usual_form() -> None:
    ids = {new_task_id() for _ in range(2000)}
    assert len(ids) == 2000
    for task_id in ids:
        parsed = uuid.UUID(task_id)
        assert str(parsed) == task_id
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def _request(**scope: Any) -> Request:
    return Request({"type": "http", "path": "/v1/tasks/noop", "query_string": b"", **scope})


@pytest.mark.parametrize(
    "scope",
    [
        {"scheme": "http", "server": ("127.0.0.1", 8000), "headers": [(b"host", b"api:8000")]},
        {"scheme": "https", "server": ("10.0.0.1", 443), "headers": [(b"host", b"a.example")]},
        {"scheme": "http", "server": ("::1", 80), "headers": []},
        {"scheme": "http", "server": ["127.0.0.1", 8000], "headers": []},
        {"scheme": "http", "server": None, "headers": [(b"host", b"h"), (b"host", b"other")]},
        {"scheme": "http", "server": ("h", 80), "headers": [], "root_path": "/courier"},
        {"scheme": "http", "server": ("h", 80), "headers": [], "app_root_path": "/api/"},
    ],
)
def test_a_task_url_is_the_one_starlette_would_build(scope: dict[str, Any]) -> None:
    for _ in range(2):  # built, then remembered
        expected = f"{str(_request(**scope).base_url).rstrip('/')}/v1/tasks/abc"
        assert task_url(_request(**scope), "abc") == expected
