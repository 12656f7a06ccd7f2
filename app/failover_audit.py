"""After a Redis failover, an accepted task the new primary lacks is written again.

Why this exists: Redis replicates asynchronously, and Sentinel may promote a replica that never
received the newest writes. The submit's ``WAIT`` (``app.atomic_write``) makes a 202 mean "a
replica has it", but not "the replica Sentinel promotes has it": with two replicas, a write
acknowledged by the one that is not promoted is dropped when it resyncs from the new primary,
and after a planned switch (``SENTINEL FAILOVER``) the old primary goes on taking writes, with
its other replica still attached and acknowledging them, until Sentinel reconfigures that
replica (about a second) and the old primary itself (up to ~10 s; ``min-replicas-to-write``
refuses writes once its last replica left). Every 202 of that window would be lost.

So each API process keeps what it wrote for every task it accepted in the last
``COURIER_REDIS_FAILOVER_AUDIT_SECONDS``, with the address of the server that took it
(``AcceptedJournal``). ``FailoverAuditor`` asks the Sentinels for the primary a few times a
second (which also moves the client's idle connections to a new primary at once, instead of
when the old one is demoted) and, for every kept task written to another server, runs its
writes again on the primary named now, on the condition that its record is absent there: a task
the new primary has is left alone, one it lacks is restored with its id, message and
idempotency marker, and counted (``courier_failover_rewrites_total``). Both outcomes move the
entry to the new primary's address, so a later failover checks it again.

What it cannot cover: an API process that dies between a 202 and the failover that loses it
(its journal dies with it), and a failover noticed only after the window (Sentinel slower than
``down-after-milliseconds`` + the election + the window); docs/guarantees/sentinel.md says
which writes of a task's life can be lost and why each is recovered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import marshal
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis as AsyncRedis

from app.atomic_write import Condition, NotReplicated, Replication, script_arguments, write_script
from worker.core.metrics import FAILOVER_REWRITES
from worker.core.redis_client import NO_WRITES, REDIS_ERRORS, Command, is_transient
from worker.core.settings import Settings

logger = logging.getLogger("courier.failover")

# How often the Sentinels are asked where the primary is (one SENTINEL MASTERS per API process).
AUDIT_INTERVAL_SECONDS = 0.25
# A bound on memory (about 1.5 KB per entry): past it the oldest entries are dropped unchecked.
MAX_ENTRIES = 200_000
# Records checked per round trip after a failover.
CHECK_BATCH = 500
# KEYS: records. Returns, per record, 1 when it exists. Read-only: runs on a full Redis too.
_PRESENT = (
    NO_WRITES
    + """
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('EXISTS', key) end
return out
"""
)

Address = tuple[str, int]


@dataclass
class _Accepted:
    at: float  # time.monotonic() of the 202
    address: Address  # the server that took the write (or last confirmed having it)
    record_key: str
    # The record's writes first, then the message's (and any marker), as one ``marshal`` blob:
    # tens of thousands of kept entries stay one bytes object each, which the garbage collector
    # does not track, instead of a few lists, tuples and dicts each (no difference in submit
    # throughput was measurable either way; make bench, submit-sentinel).
    commands: bytes

    def writes(self) -> list[Command]:
        return [(name, tuple(args)) for name, args in marshal.loads(self.commands)]


class AcceptedJournal:
    """Accepted submits of the last ``window`` seconds, for ``FailoverAuditor``. Written from
    the event loop and from worker threads (idempotent submits), so guarded by a lock."""

    def __init__(self, window: float, max_entries: int = MAX_ENTRIES) -> None:
        self.window = window
        self._entries: deque[_Accepted] = deque(maxlen=max_entries)
        self._lock = threading.Lock()

    def add(self, address: Address, commands: Sequence[Command]) -> None:
        with self._lock:
            try:
                blob = marshal.dumps([(name, list(args)) for name, args in commands])
            except ValueError:  # a value marshal cannot hold: the write stands, unkept
                logger.error("accepted task not kept for the failover audit", exc_info=True)
                return
            self._entries.append(_Accepted(time.monotonic(), address, commands[0][1][0], blob))

    def __len__(self) -> int:
        return len(self._entries)

    def elsewhere(self, primary: Address) -> list[_Accepted]:
        """Entries within the window written to a server other than ``primary`` (older ones
        are dropped first)."""
        horizon = time.monotonic() - self.window
        with self._lock:
            while self._entries and self._entries[0].at < horizon:
                self._entries.popleft()
            return [entry for entry in self._entries if entry.address != primary]


class FailoverAuditor:
    """Follows the primary Sentinel names and re-checks the journal on every change."""

    def __init__(
        self,
        client: AsyncRedis,
        journal: AcceptedJournal,
        replication: Replication,
        master: str,
        interval: float = AUDIT_INTERVAL_SECONDS,
    ) -> None:
        self._rewrites = FAILOVER_REWRITES.labels(master)
        self._client = client
        self._journal = journal
        self._replication = replication
        self._interval = interval

    async def run(self) -> None:
        deferred = False  # logged once per spell of failures, not every tick
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.audit()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let the loop die: the next tick tries again
                if not deferred or not is_transient(exc):
                    level = logging.WARNING if is_transient(exc) else logging.ERROR
                    logger.log(level, "failover audit deferred", extra={"error": repr(exc)})
                deferred = True
            else:
                if deferred:
                    logger.info("failover audit resumed", extra={"pending": len(self._journal)})
                deferred = False

    async def primary(self) -> Address:
        """The primary the Sentinels name now. Through the pool, which on a change drops its
        idle connections: the next submit connects to the new primary."""
        pool: Any = self._client.connection_pool
        host, port = await pool.get_master_address()
        return str(host), int(port)

    async def audit(self) -> int:
        """Check every kept entry written elsewhere than the named primary; returns how many
        had to be written again."""
        primary = await self.primary()  # every tick: moves idle connections at once
        suspects = self._journal.elsewhere(primary) if len(self._journal) else []
        rewritten = 0
        for start in range(0, len(suspects), CHECK_BATCH):
            batch = suspects[start : start + CHECK_BATCH]
            try:
                address, present = await records_present(
                    self._client, [entry.record_key for entry in batch]
                )
            except REDIS_ERRORS:
                return rewritten  # the primary is away again: next tick
            if address != primary:
                return rewritten  # the connection reached another server: next tick
            for entry, here in zip(batch, present, strict=True):
                if not here:
                    try:
                        await self._rewrite(entry, primary)
                    except NotReplicated:
                        # Restored on the primary, not yet on a replica: checked again next
                        # tick (its record is there then, so it is not counted twice).
                        rewritten += 1
                        return rewritten
                    except REDIS_ERRORS:
                        return rewritten
                    rewritten += 1
                entry.address = primary
        return rewritten

    async def _rewrite(self, entry: _Accepted, primary: Address) -> None:
        """The task's writes again, on the condition that its record is still absent."""
        record_key = entry.record_key
        keys, argv = script_arguments(entry.writes(), Condition(record_key))
        try:
            written = await write_script(self._client, keys, argv, self._replication)
        except NotReplicated:
            self._restored(record_key, entry.address, primary)
            raise
        if written.applied:
            self._restored(record_key, entry.address, primary)

    def _restored(self, record_key: Any, lost_on: Address, primary: Address) -> None:
        self._rewrites.inc()
        logger.warning(
            "accepted task restored after a failover",
            extra={"record": str(record_key), "written_to": lost_on, "primary": primary},
        )


async def records_present(client: AsyncRedis, keys: list[Any]) -> tuple[Address, list[bool]]:
    """Which of ``keys`` exist, and the address of the server that said so (one script call
    on one connection: every answer comes from that server)."""
    pool: Any = client.connection_pool
    connection = await pool.get_connection()
    try:
        await connection.send_command("EVAL", _PRESENT, len(keys), *keys)
        reply = await connection.read_response()
        return (str(connection.host), int(connection.port)), [bool(x) for x in reply]
    except BaseException:
        await connection.disconnect()
        raise
    finally:
        await pool.release(connection)


def failover_audit(
    settings: Settings, client: AsyncRedis
) -> tuple[AcceptedJournal | None, FailoverAuditor | None]:
    """The journal a ``TaskQueue`` fills and its auditor, with Sentinel only (else None)."""
    if not settings.uses_sentinel or not settings.redis_failover_audit_seconds:
        return None, None
    journal = AcceptedJournal(settings.redis_failover_audit_seconds)
    replication = Replication.from_settings(settings)
    master = str(settings.redis_sentinel_master)
    return journal, FailoverAuditor(client, journal, replication, master)


@contextlib.asynccontextmanager
async def auditing(auditor: FailoverAuditor | None) -> AsyncIterator[None]:
    """Runs ``auditor`` in the background for the life of the ``async with`` block."""
    if auditor is None:
        yield
        return
    task = asyncio.create_task(auditor.run(), name="courier-failover-audit")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
