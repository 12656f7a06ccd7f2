from __future__ import annotations

import pytest
from pydantic import BaseModel

from worker.registry import registered_tasks, task


class Empty(BaseModel):
    pass


def test_every_task_module_is_discovered() -> None:
    assert set(registered_tasks()) >= {
        "noop",
        "send_email",
        "process_image",
        "generate_report",
        "reconcile_records",
    }


def test_a_name_registered_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="registered twice"):

        @task(name="noop", payload=Empty)
        def impostor(payload: Empty, ctx: object) -> None:
            """Not the real noop."""
