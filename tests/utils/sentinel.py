"""Three redis-servers (a primary, two replicas) watched by three Sentinels, on loopback.

Every process is real and stopped with the cluster (``tests/utils/processes.py`` tracks them).
The Sentinels decide fast: a primary that does not answer for ``DOWN_AFTER_MS`` is down, and
with two of three agreeing a replica is promoted within a second or two. The data servers and
the Sentinels have different passwords, as a deployment may, so a client that mixes them up
fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Self

import redis

from tests.utils.netns import NetworkLink
from tests.utils.processes import RUNNING, RedisServer, ServerProcess, free_port, wait_until

MASTER = "courier"
DATA_PASSWORD = "data-secret"
SENTINEL_PASSWORD = "sentinel-secret"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


class SentinelProcess(ServerProcess):
    """One redis-sentinel with its own config file (Sentinel rewrites it as it learns)."""

    def __init__(
        self,
        workdir: Path,
        primary_port: int,
        primary_host: str = "127.0.0.1",
        bind: tuple[str, ...] = ("127.0.0.1",),
    ) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "sentinel.conf"
        self.config.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    f"bind {' '.join(bind)}",
                    f"dir {workdir}",
                    f"requirepass {SENTINEL_PASSWORD}",
                    f"sentinel sentinel-pass {SENTINEL_PASSWORD}",
                    f"sentinel monitor {MASTER} {primary_host} {primary_port} 2",
                    f"sentinel auth-pass {MASTER} {DATA_PASSWORD}",
                    f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}",
                    f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}",
                    f"sentinel parallel-syncs {MASTER} 2",
                    "",
                ]
            )
        )
        self.process: subprocess.Popen[bytes] | None = None

    def client(self) -> redis.Redis:
        return redis.Redis(
            port=self.port, password=SENTINEL_PASSWORD, socket_timeout=1, decode_responses=True
        )

    def start(self) -> None:
        log = (self.workdir / "sentinel.log").open("ab")
        self.process = subprocess.Popen(
            ["redis-server", str(self.config), "--sentinel"], stdout=log, stderr=log
        )
        log.close()
        process = self.process
        RUNNING[process.pid] = self
        with self.client() as client:
            # One that exits (its port taken) fails now, with its reason, not after 30 s.
            wait_until(
                lambda: process.poll() is not None or _pings(client),
                30,
                f"redis-sentinel on port {self.port}",
            )
        if process.poll() is not None:
            RUNNING.pop(process.pid, None)
            self.process = None
            log_text = (self.workdir / "sentinel.log").read_text(errors="replace")
            raise RuntimeError(f"redis-sentinel on port {self.port} exited:\n{log_text[-1000:]}")


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


class SentinelCluster:
    """``with SentinelCluster(tmp_path) as cluster:`` three Redis, three Sentinels, all up."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        auth = (
            *("--requirepass", DATA_PASSWORD, "--masterauth", DATA_PASSWORD),
            # As the chart configures them: a primary left without a replica refuses writes.
            *("--min-replicas-to-write", "1", "--min-replicas-max-lag", "10"),
            *("--repl-diskless-sync-delay", "0"),
        )
        primary = RedisServer(workdir / "redis-0", extra_args=auth)
        replica_of = ("--replicaof", "127.0.0.1", str(primary.port))
        self.servers = [primary] + [
            RedisServer(workdir / f"redis-{i}", extra_args=(*auth, *replica_of)) for i in (1, 2)
        ]
        self.sentinels = [
            SentinelProcess(workdir / f"sentinel-{i}", primary.port) for i in range(3)
        ]

    def __enter__(self) -> Self:
        with contextlib.ExitStack() as stack:
            stack.callback(self.stop)
            for server in self.servers:
                server.start()
            for replica in self.servers[1:]:
                wait_until(partial(_in_sync, replica), 30, f"replica {replica.port} in sync")
            for sentinel in self.sentinels:
                sentinel.start()
            # Each Sentinel has found the replicas and the two other Sentinels.
            wait_until(self._sentinels_see_everyone, 30, "the Sentinels to find each other")
            stack.pop_all()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        for process in [*self.sentinels, *self.servers]:
            process.stop()

    # --- what clients are given ---

    @property
    def url(self) -> str:
        """``COURIER_REDIS_URL``: the data password and database; its host is not used."""
        return f"redis://:{DATA_PASSWORD}@127.0.0.1:1/0"

    def courier_vars(self) -> dict[str, str]:
        return {
            "COURIER_REDIS_URL": self.url,
            "COURIER_REDIS_SENTINELS": ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels),
            "COURIER_REDIS_SENTINEL_MASTER": MASTER,
            "COURIER_REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
        }

    # --- what the test asks and does ---

    def primary_port(self) -> int:
        """The primary as the first Sentinel that answers names it."""
        for sentinel in self.sentinels:
            if sentinel.process is None:
                continue
            with contextlib.suppress(redis.RedisError), sentinel.client() as client:
                _, port = client.sentinel_get_master_addr_by_name(MASTER)
                return int(port)
        raise RuntimeError("no Sentinel answers")

    def server(self, port: int) -> RedisServer:
        return next(server for server in self.servers if server.port == port)

    def data_client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, password=DATA_PASSWORD, socket_timeout=2)

    def wait_for_new_primary(self, old: int, timeout: float = 30) -> int:
        """Until every live Sentinel names another primary, and that one says it is one."""

        def switched() -> int | None:
            ports = set()
            for sentinel in self.sentinels:
                if sentinel.process is None:
                    continue
                with contextlib.suppress(redis.RedisError), sentinel.client() as client:
                    ports.add(int(client.sentinel_get_master_addr_by_name(MASTER)[1]))
            if len(ports) != 1 or old in ports:
                return None
            port = ports.pop()
            with contextlib.suppress(redis.RedisError), self.data_client(port) as client:
                if client.info("replication")["role"] == "master":
                    return port
            return None

        return wait_until(switched, timeout, f"a primary other than {old}", interval=0.1)

    def wait_settled(self, timeout: float = 60) -> int:
        """Until every live server other than the primary the Sentinels name now is its replica
        with the link up; returns that primary. An old primary still taking writes (until
        Sentinel converts it, up to ~10 s after a forced failover) has lost them by then, so
        statuses read after this are final. The Sentinels are asked on every poll: on a loaded
        machine a promoted replica slow to answer for ``down-after-milliseconds`` is failed
        over in turn (seen: a second switch 2 s after the first)."""
        named: list[int] = []

        def settled() -> bool:
            try:
                primary = self.primary_port()
            except RuntimeError:
                return False
            named.append(primary)
            for server in self.servers:
                if server.process is None or server.port == primary:
                    continue
                try:
                    with self.data_client(server.port) as client:
                        info = client.info("replication")
                except redis.RedisError:
                    return False
                if info["role"] != "slave" or int(info["master_port"]) != primary:
                    return False
                if info.get("master_link_status") != "up":
                    return False
            return True

        wait_until(settled, timeout, "every replica to follow the named primary", interval=0.2)
        return named[-1]

    def kill_primary(self) -> int:
        """SIGKILL the primary; returns its port."""
        port = self.primary_port()
        self.server(port).kill()
        return port

    def demote_primary(self) -> int:
        """``SENTINEL FAILOVER``: a planned switch; the old primary becomes a replica. Returns
        the old primary's port."""
        port = self.primary_port()

        def started() -> bool:
            for sentinel in self.sentinels:
                if sentinel.process is None:
                    continue
                with contextlib.suppress(redis.RedisError), sentinel.client() as client:
                    return bool(client.execute_command("SENTINEL", "FAILOVER", MASTER))
            return False

        # NOGOODSLAVE while the replicas are still catching up: asked again until taken.
        wait_until(started, 30, "Sentinel to accept a failover", interval=0.2)
        return port

    # --- faults for the chaos suite (tests/reliability/chaos_sentinel.py) ---

    def freeze_primary(self) -> int:
        """SIGSTOP the primary: its sockets stay open, nothing answers (a stalled host, a long
        GC-like pause). Returns its port; ``thaw`` resumes it."""
        port = self.primary_port()
        process = self.server(port).process
        assert process is not None
        os.kill(process.pid, signal.SIGSTOP)
        return port

    def thaw(self, port: int) -> None:
        """SIGCONT a frozen server: it comes back believing it is still the primary."""
        process = self.server(port).process
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)

    def restart_as_replica(self, port: int) -> None:
        """Start a killed server again (empty: no persistence) as a replica of the primary the
        Sentinels name now, as an orchestrator restarting its pod would."""
        server = self.server(port)
        primary = self.primary_port()
        args = list(server.extra_args)
        if "--replicaof" in args:
            at = args.index("--replicaof")
            del args[at : at + 3]
        server.extra_args = (*args, "--replicaof", "127.0.0.1", str(primary))
        server.start()

    def kill_sentinel(self, index: int = 0) -> None:
        """SIGKILL one Sentinel (by default the first one every client is given)."""
        self.sentinels[index].kill()

    def restart_sentinel(self, index: int = 0) -> None:
        """Start a killed Sentinel again from the config it rewrote (same id, same peers)."""
        self.sentinels[index].start()

    def _sentinels_see_everyone(self) -> bool:
        for sentinel in self.sentinels:
            try:
                with sentinel.client() as client:
                    master = client.sentinel_master(MASTER)
                    if int(master["num-slaves"]) < 2 or int(master["num-other-sentinels"]) < 2:
                        return False
            except redis.RedisError:
                return False
        return True


def _in_sync(server: RedisServer) -> bool:
    try:
        with redis.Redis(port=server.port, password=DATA_PASSWORD) as client:
            return bool(client.info("replication").get("master_link_status") == "up")
    except redis.RedisError:
        return False


# --- a cluster whose first server can be cut off (network namespace) -------------------------


class NamespacedRedisServer(RedisServer):
    """A redis-server inside a ``NetworkLink``'s namespace, listening on the link's inner
    address: the host reaches it there only while the link is up."""

    def __init__(
        self, link: NetworkLink, workdir: Path, port: int, extra_args: tuple[str, ...]
    ) -> None:
        super().__init__(workdir, port, extra_args)
        self.link = link
        self.host = link.inner_address
        self.exec_prefix = link.exec_prefix

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"


class NamespacedSentinelCluster(SentinelCluster):
    """``SentinelCluster`` whose first server (the primary at the start) runs in ``link``'s
    namespace; the replicas and Sentinels run on the host and reach it over the veth, and
    listen on the host's end of the link too, because the primary reports its replicas (and
    the Sentinels announce themselves) by the address it sees them from. ``link.cut()`` then
    isolates the primary from everyone: packets dropped, no reset, as in a real partition."""

    def __init__(self, workdir: Path, link: NetworkLink) -> None:
        super().__init__(workdir)
        self.link = link
        first = self.servers[0]
        self.servers[0] = NamespacedRedisServer(link, first.workdir, first.port, first.extra_args)
        on_host = ("--bind", "127.0.0.1", link.host_address)
        for replica in self.servers[1:]:
            args = list(replica.extra_args)
            args[args.index("--replicaof") + 1] = link.inner_address
            replica.extra_args = (*args, *on_host)
        self.sentinels = [
            SentinelProcess(
                sentinel.workdir,
                first.port,
                primary_host=link.inner_address,
                bind=("127.0.0.1", link.host_address),
            )
            for sentinel in self.sentinels
        ]

    def data_client(self, port: int) -> redis.Redis:
        host = getattr(self.server(port), "host", "127.0.0.1")
        return redis.Redis(host=host, port=port, password=DATA_PASSWORD, socket_timeout=2)
