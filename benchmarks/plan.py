"""How big each scenario is: the full run (for docs/performance/) or ``--quick`` (a few minutes)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    runs: int = 3
    # The size is 20,000 (``--tasks 20000``); 10,000 keeps the full run near 30 min on
    # this shared 2-core machine. Drain rates exclude start-up, so they are steady-state rates.
    tasks: int = 10_000
    load_seconds: float = 10.0
    round_trips: int = 1_000
    memory_tasks: int = 10_000
    soak_seconds: float = 300.0
    footprint_tasks: int = 10_000
    # rq and arq drain a few hundred jobs/s: their drain is timed over at most this long.
    peer_cap_seconds: float = 30.0
    drain_timeout: float = 240.0


FULL = Plan()
QUICK = Plan(
    runs=2,
    tasks=3_000,
    load_seconds=3.0,
    round_trips=200,
    memory_tasks=2_000,
    soak_seconds=30.0,
    footprint_tasks=2_000,
    peer_cap_seconds=8.0,
    drain_timeout=120.0,
)
