"""The Sentinel faults at test scale (``make chaos`` runs them several times each and prints the
table): under continuous submits and two busy workers, no accepted task is lost and no status
is wrong after any fault, and the workers run tasks again by themselves."""

from __future__ import annotations

import pytest

from tests.reliability import chaos_sentinel

# Measured 2026-12-07 (README "Guarantees", Redis Sentinel under faults). Before the fence
# (WAIT, min-replicas-to-write, acknowledgements on the fetch's own connection) the planned
# failover and the partition failed here too; with it, only the frozen primary still does,
# rarely.
FROZEN_PRIMARY_TAKES_RESULTS = (
    "A result write of a task fetched from the new primary can still go to the frozen old one"
    " (a pooled connection from before the freeze, or a new one: a TCP connect to a stopped"
    " process succeeds), wait there until SIGCONT, and be taken by it (its replicas'"
    " acknowledgements are only as old as the freeze, under min-replicas-max-lag 10). It is"
    " lost at the resync while the ack reached the new primary: the task ran and reads"
    " 'started' (seen with the fence: 3, 0, 4, 0, 0, 0, 2 of ~360 tasks in seven make chaos"
    " runs of three freezes; since discovery skips the leading Sentinel 0, 0, 1, 0, 0 in five)."
)


@pytest.mark.parametrize(
    "fault",
    [
        "kill-primary",
        "planned-failover",
        pytest.param(
            "freeze-primary",
            marks=pytest.mark.xfail(strict=False, reason=FROZEN_PRIMARY_TAKES_RESULTS),
        ),
        "kill-sentinel",
        "partition-primary",
    ],
)
def test_no_accepted_task_is_lost_or_misreported_across_a_sentinel_fault(fault: str) -> None:
    # The two failovers every deployment meets (a dead primary, a planned switch) twice.
    repeats = 2 if fault in ("kill-primary", "planned-failover") else 1
    figures = chaos_sentinel.sentinel_fault(fault, repeats=repeats, steady=2.0)
    print(figures.row())
    assert figures.accepted > 0, figures
    assert "unexpected" not in figures.notes, figures
    assert figures.resumed_s is not None, f"the workers never ran a task again: {figures}"
    assert figures.notes.get("new_client_ok", True), figures
    assert (figures.lost, figures.wrong_status) == (0, 0), figures
