"""Task ids and the ``Location`` of a submit: made faster than Starlette and ``uuid`` make
them, with the same results."""

from __future__ import annotations

import uuid

from app.queue import new_task_id


def test_a_task_id_is_a_random_uuid4_in_its_usual_form() -> None:
    ids = {new_task_id() for _ in range(2000)}
    assert len(ids) == 2000
    for task_id in ids:
        parsed = uuid.UUID(task_id)
        assert str(parsed) == task_id
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
