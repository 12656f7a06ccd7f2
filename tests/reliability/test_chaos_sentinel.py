"""The Sentinel faults at test scale (``make chaos`` runs them several times each and prints the
table): under continuous submits and two busy workers, no accepted task is lost and no status
is wrong after any fault, and the workers run tasks again by themselves."""

from __future__ import annotations

import pytest

from tests.reliability import chaos_sentinel

# Measured on main before the fencing work (2026-12-07), one planned failover at test scale:
# 169 accepted, all 169 ran, 84 read 404 at the end.
PLANNED_FAILOVER_LOSES_RECORDS = (
    "SENTINEL FAILOVER leaves the old primary taking writes until Sentinel converts it (up to"
    " ~10 s): submits are accepted there and the workers, still connected to it, run them and"
    " store their results there; its resync then drops the records and results, so tasks that"
    " ran read 404 (seen: 84 of 169). Needs the old primary fenced before the switch (issue 14,"
    " item 3)."
)


@pytest.mark.parametrize(
    "fault",
    [
        "kill-primary",
        pytest.param(
            "planned-failover",
            marks=pytest.mark.xfail(strict=False, reason=PLANNED_FAILOVER_LOSES_RECORDS),
        ),
        "freeze-primary",
        "kill-sentinel",
        "partition-primary",
    ],
)
def test_no_accepted_task_is_lost_or_misreported_across_a_sentinel_fault(fault: str) -> None:
    figures = chaos_sentinel.sentinel_fault(fault, repeats=1, steady=2.0)
    print(figures.row())
    assert figures.accepted > 0, figures
    assert "unexpected" not in figures.notes, figures
    assert figures.resumed_s is not None, f"the workers never ran a task again: {figures}"
    assert figures.notes.get("new_client_ok", True), figures
    assert (figures.lost, figures.wrong_status) == (0, 0), figures
