"""The inline pool's timekeeper on its own, in this process's main thread: what reaches the task
body, and that nothing does once it returned (the worker-level behaviour is test_inline_pool)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from worker.pool.interrupts import (
    INTERRUPT_SIGNAL,
    HardTimeLimit,
    Job,
    Outcome,
    TerminateRequested,
    Timekeeper,
)


class Calls:
    def __init__(self) -> None:
        self.soft: list[Job] = []
        self.stuck: list[Job] = []
        self.stuck_seen = threading.Event()

    def on_stuck(self, job: Job) -> None:
        self.stuck.append(job)
        self.stuck_seen.set()


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def clock(calls: Calls) -> Iterator[Timekeeper]:
    keeper = Timekeeper(grace=0.3, on_soft=calls.soft.append, on_stuck=calls.on_stuck)
    keeper.start()
    yield keeper
    keeper.stop()


def run(clock: Timekeeper, job: Job, body: float) -> BaseException | None:
    """Sleep ``body`` seconds as a task would, in small steps; what interrupted it."""
    clock.begin(job)
    try:
        clock.enter(job)
        end = time.monotonic() + body
        while time.monotonic() < end:
            time.sleep(0.01)
    except BaseException as exc:
        return exc
    finally:
        job.running = False
        clock.end(job)
    return None


def test_the_soft_limit_raises_soft_time_limit_exceeded_in_the_task(
    clock: Timekeeper, calls: Calls
) -> None:
    job = Job("soft", soft=0.2, hard=None)
    assert isinstance(run(clock, job, 5), SoftTimeLimitExceeded)
    assert calls.soft == [job] and job.outcome is None


def test_the_hard_limit_is_not_an_exception_a_task_can_swallow(clock: Timekeeper) -> None:
    job = Job("hard", soft=None, hard=0.2)
    clock.begin(job)
    swallowed = 0
    try:
        clock.enter(job)
        end = time.monotonic() + 5
        while time.monotonic() < end:
            try:
                time.sleep(0.01)
            except Exception:
                swallowed += 1
        pytest.fail("the hard limit did not stop the body")
    except HardTimeLimit:
        pass
    finally:
        job.running = False
        clock.end(job)
    assert (job.outcome, swallowed) == (Outcome.HARD_TIME_LIMIT, 0)


def test_terminate_stops_only_the_task_it_names(clock: Timekeeper) -> None:
    job = Job("running", soft=None, hard=None)
    threading.Timer(0.2, clock.terminate, args=({"another"}, signal.SIGTERM)).start()
    threading.Timer(0.4, clock.terminate, args=({"running"}, signal.SIGTERM)).start()
    assert isinstance(run(clock, job, 5), TerminateRequested)
    assert (job.outcome, job.signum) == (Outcome.TERMINATED, signal.SIGTERM)


def test_a_terminate_before_the_body_starts_is_raised_when_it_starts(clock: Timekeeper) -> None:
    job = Job("accepting", soft=None, hard=None)
    clock.begin(job)
    assert clock.terminate({"accepting"}, signal.SIGTERM, announced=True)
    with pytest.raises(TerminateRequested):
        clock.enter(job)
    clock.end(job)
    assert job.announced


def test_nothing_reaches_the_main_thread_once_the_task_returned(clock: Timekeeper) -> None:
    job = Job("quick", soft=0.1, hard=0.2)
    assert run(clock, job, 0) is None
    assert not clock.terminate({"quick"}, signal.SIGTERM)
    time.sleep(0.4)  # past both limits: the timekeeper must not send anything for it
    signal.pthread_kill(threading.main_thread().ident or 0, INTERRUPT_SIGNAL)  # a stray one
    assert job.outcome is None and not job.soft_sent


def test_a_task_that_does_not_stop_is_reported_stuck_after_the_grace(
    clock: Timekeeper, calls: Calls
) -> None:
    job = Job("stuck", soft=None, hard=0.1)
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {INTERRUPT_SIGNAL})
    try:
        clock.begin(job)
        clock.enter(job)
        assert calls.stuck_seen.wait(timeout=10)
        assert calls.stuck == [job] and job.outcome is Outcome.HARD_TIME_LIMIT
        job.running = False
        clock.end(job)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # the pending signal is ignored


def _thread_cpu_seconds(thread: threading.Thread) -> float:
    assert thread.ident is not None  # a pthread_t, which pthread_getcpuclockid takes
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def test_a_task_without_limits_costs_the_timekeeper_thread_nothing(clock: Timekeeper) -> None:
    """No limit, no deadline: the thread sleeps through every task (a wake-up per task was a
    thread switch and a GIL hand-over per task on the drain's path)."""
    keeper = next(t for t in threading.enumerate() if t.name == "courier-pool-timekeeper")
    time.sleep(0.05)  # started and asleep
    before = _thread_cpu_seconds(keeper)
    for i in range(2000):
        job = Job(str(i), None, None)
        clock.begin(job)
        clock.enter(job)
        job.running = False
        clock.end(job)
        time.sleep(0)  # the GIL free, as a task's I/O leaves it: a woken thread would run
    assert _thread_cpu_seconds(keeper) - before < 0.002
