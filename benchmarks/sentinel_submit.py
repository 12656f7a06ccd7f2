"""Scenario 1s: what Sentinel mode costs a submit: ``WAIT`` for a replica, and the audit.

Three Courier APIs (gunicorn, 2 uvicorn workers each) loaded in turn by wrk with 32 connections,
no worker running: against a standalone Redis (the baseline), against a Sentinel-managed
primary with two replicas and ``COURIER_REDIS_MIN_REPLICAS_ACK=0`` (Sentinel discovery and the
failover audit, no ``WAIT``), and the same with the default ``WAIT`` for one replica. One knob
at a time: the second row prices Sentinel mode without ``WAIT``, the third adds ``WAIT``. The
Redis servers are alike (no persistence, ``noeviction``); the Sentinel set runs
``min-replicas-to-write 1`` as the chart does.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any

from benchmarks.load import Load, run_wrk
from benchmarks.plan import Plan
from benchmarks.procs import LOOPBACK, Stack, free_port, log, stack, wait_until
from benchmarks.services import Api, Redis, start_courier_api, start_redis
from benchmarks.stats import Figure

SCENARIO = "1s submit with Sentinel"
MASTER = "courier"


def _start_server(s: Stack, *extra: str) -> Redis:
    """As the chart runs them: a primary left without a replica refuses writes, a replica
    syncs at once."""
    return start_redis(s, "--min-replicas-to-write", "1", "--repl-diskless-sync-delay", "0", *extra)


def _in_sync(replica: Redis) -> bool:
    return bool(replica.client().info("replication").get("master_link_status") == "up")


def start_sentinel_set(s: Stack) -> tuple[Redis, list[int]]:
    """A primary, two replicas in sync, three Sentinels that found them; the Sentinels' ports."""
    primary = _start_server(s)
    replicas = [_start_server(s, "--replicaof", LOOPBACK, str(primary.port)) for _ in range(2)]
    for replica in replicas:
        wait_until(partial(_in_sync, replica), 30, "a replica in sync")
    ports = []
    for index in range(3):
        port = free_port()
        config = s.tmp / f"sentinel-{index}.conf"
        config.write_text(
            f"port {port}\nbind {LOOPBACK}\ndir {s.tmp}\n"
            f"sentinel monitor {MASTER} {LOOPBACK} {primary.port} 2\n"
            f"sentinel down-after-milliseconds {MASTER} 5000\n"
        )
        s.spawn(["redis-server", str(config), "--sentinel"])
        ports.append(port)

    def found_replicas() -> bool:
        for port in ports:
            master: Any = Redis(port).client().sentinel_master(MASTER)
            if int(master["num-slaves"]) < 2:
                return False
        return True

    wait_until(found_replicas, 30, "the Sentinels to find the replicas")
    return primary, ports


def _load(api: Api, r: Redis, plan: Plan) -> Load:
    r.client().flushall()
    result = run_wrk(f"{api.url}/v1/tasks/noop", plan.load_seconds, post=True)
    if result.errors:
        log(f"  warning: {result.errors} non-2xx/timeouts")
    return result


def run(plan: Plan) -> list[Figure]:
    standalone: list[Load] = []
    no_wait: list[Load] = []
    waited: list[Load] = []
    with stack("submit-sentinel") as s:
        alone = start_redis(s)
        primary, sentinels = start_sentinel_set(s)
        sentinel_vars = {
            "COURIER_REDIS_SENTINELS": ",".join(f"{LOOPBACK}:{port}" for port in sentinels),
            "COURIER_REDIS_SENTINEL_MASTER": MASTER,
        }
        apis = {
            "standalone": start_courier_api(s, alone),
            "no-wait": start_courier_api(
                s, primary, {**sentinel_vars, "COURIER_REDIS_MIN_REPLICAS_ACK": "0"}
            ),
            "wait": start_courier_api(s, primary, sentinel_vars),
        }
        loads = [
            (standalone, apis["standalone"], alone),
            (no_wait, apis["no-wait"], primary),
            (waited, apis["wait"], primary),
        ]
        for _, api, server in loads:  # warm-up, not counted: the first load of a run was slow
            _load(api, server, replace(plan, load_seconds=1))
        for i in range(plan.runs):
            log(f"{SCENARIO}: run {i + 1}/{plan.runs}")
            # Each run starts with another of the three: no position favours one.
            for into, api, server in loads[i % 3 :] + loads[: i % 3]:
                into.append(_load(api, server, plan))
            log(
                f"  standalone {standalone[-1].requests_per_second:.0f} req/s, "
                f"sentinel {no_wait[-1].requests_per_second:.0f}, "
                f"sentinel+WAIT {waited[-1].requests_per_second:.0f}"
            )
    base = [x.requests_per_second for x in standalone]
    return [
        Figure(
            SCENARIO, "POST throughput, Sentinel mode without WAIT", "req/s",
            [x.requests_per_second for x in no_wait], "standalone Redis", base,
        ),
        Figure(
            SCENARIO, "POST throughput, Sentinel mode with WAIT 1 replica", "req/s",
            [x.requests_per_second for x in waited], "standalone Redis", base,
        ),
        Figure(
            SCENARIO, "POST p50 latency (32 in flight), with WAIT", "ms",
            [x.p50_ms for x in waited], "standalone", [x.p50_ms for x in standalone],
        ),
    ]  # fmt: skip
