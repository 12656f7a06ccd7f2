"""The fault-injection suite at test scale (``make chaos`` runs the full scale and prints the
table): every task that got a 202 is executed, whatever happens to workers and Redis."""

from __future__ import annotations

import pytest

from tests.reliability import chaos
from tests.utils.processes import POOLS


def test_killed_pool_children_and_workers_lose_nothing() -> None:
    figures = chaos.worker_loss(tasks=60, child_kills=4, worker_kills=1)
    assert (figures.lost, figures.succeeded) == (0, 60), figures
    kills = figures.notes["child_kills"] + 2 * figures.notes["worker_kills"]
    # At-least-once: only executions that were killed run twice (2 processes per worker).
    assert figures.duplicated <= kills, figures


def test_sigterm_lets_running_tasks_finish_and_loses_nothing() -> None:
    figures = chaos.graceful_scale_down(long_tasks=2, sleep=2.0)
    assert figures.notes["exit_code"] == 0, figures
    assert figures.notes["finished_before_exit"] == 2, figures
    assert (figures.lost, figures.duplicated) == (0, 0), figures


def test_a_task_outliving_the_grace_period_is_redelivered() -> None:
    figures = chaos.grace_exceeded(sleep=8.0, grace=1.0)
    assert (figures.lost, figures.succeeded) == (0, 1), figures
    assert figures.notes["executions"] == 2, figures


def test_clean_redis_restarts_lose_no_accepted_task_and_workers_resume() -> None:
    figures = chaos.redis_restarts(restarts=2, mode="SIGTERM", fsync="everysec")
    assert figures.refused_503 > 0, "the API should answer 503 while Redis is away"
    assert figures.accepted > 0 and figures.lost == 0, figures


# inline: each task's state rides in the call acknowledging it (worker/core/result_carry.py),
# which a killed Redis may cut: stored again, or the task runs again, never lost.
@pytest.mark.parametrize("pool", POOLS)
def test_killed_redis_with_fsync_always_loses_no_accepted_task(pool: str) -> None:
    figures = chaos.redis_restarts(restarts=2, mode="SIGKILL", fsync="always", pool=pool)
    assert figures.accepted > 0 and figures.lost == 0, figures


def test_api_and_worker_start_without_redis_and_become_ready_when_it_appears() -> None:
    figures = chaos.redis_down_at_startup()
    assert figures.notes["api_ready_without_redis"] == 503, figures
    assert figures.notes["worker_ready_without_redis"] == 503, figures
    assert figures.succeeded == 1, figures


@pytest.mark.parametrize("pool", POOLS)
def test_a_full_redis_refuses_submits_then_drains_everything_accepted(pool: str) -> None:
    # 16 MB: between two of the API's slow memory readings (1 s apart below 80 %) the submits
    # of this loop add well under 10 % of it, so the watermark is seen before maxmemory.
    figures = chaos.redis_full(maxmemory_mb=16, pool=pool)
    notes = figures.notes
    assert figures.accepted > 0 and figures.refused_503 == 20, figures
    assert notes["first_503_by_watermark"], figures
    assert int(notes["first_503_at"].rstrip("%")) < 100, figures
    assert notes["503_json"] and notes["503_retry_after"] == "5", figures
    assert notes["readyz"] == 503 and notes["readyz_says_full"], figures
    assert notes["status_read_while_full"] == 200, figures
    assert (notes["workers_alive"], notes["unrecoverable"]) == (1, 0), figures
    assert (figures.lost, figures.succeeded) == (0, figures.accepted), figures
    assert figures.duplicated == 0, figures
