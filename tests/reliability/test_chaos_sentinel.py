"""The Sentinel faults at test scale (``make chaos`` runs them several times each and prints the
table): under continuous submits and two busy workers, no accepted task is lost and no status
is wrong after any fault, and the workers run tasks again by themselves."""

from __future__ import annotations

import pytest

from tests.reliability import chaos_sentinel

# Measured on main before the fencing work (2026-12-07): see README "Guarantees", Redis
# Sentinel under faults. Each reason names what the fence (issue 14, item 3) has to close.
PLANNED_FAILOVER_LOSES_RECORDS = (
    "SENTINEL FAILOVER leaves the old primary taking writes until Sentinel converts it (up to"
    " ~10 s): submits are accepted there and the workers, still connected to it, run them and"
    " store their results there; its resync then drops the records and results, so tasks that"
    " ran read 404 (seen: 84 of 169 at one switch; 248 of 464 and 1 lost at three)."
)
STALE_PRIMARY_TAKES_RESULTS = (
    "A primary frozen (SIGSTOP) or cut off until a replica is promoted comes back as a stale"
    " primary for up to ~10 s (Sentinel's INFO period) before it is converted: connections to"
    " it that outlived the outage work again, results stored through them are lost at its"
    " resync, and tasks that ran read 'started' (seen: freeze 42 of 180 in one run of five,"
    " partition 110 of 539 over three cuts). The workers often resume only once it is"
    " converted (~14 s after the fault). Needs min-replicas-to-write on the servers and the"
    " fence."
)


@pytest.mark.parametrize(
    "fault",
    [
        "kill-primary",
        pytest.param(
            "planned-failover",
            marks=pytest.mark.xfail(strict=False, reason=PLANNED_FAILOVER_LOSES_RECORDS),
        ),
        pytest.param(
            "freeze-primary",
            marks=pytest.mark.xfail(strict=False, reason=STALE_PRIMARY_TAKES_RESULTS),
        ),
        "kill-sentinel",
        pytest.param(
            "partition-primary",
            marks=pytest.mark.xfail(strict=False, reason=STALE_PRIMARY_TAKES_RESULTS),
        ),
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
