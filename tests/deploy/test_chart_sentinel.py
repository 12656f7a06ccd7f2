"""The chart's sentinel mode really fails over: its own commands, run as three pods on loopback.

The `redis.mode: sentinel` render is taken apart the way the kubelet would run it: the Redis
ConfigMap's files (redis.conf and the start and readiness scripts) are written to a directory
that stands for the `/etc/redis` volume, and each of the three pods' `redis` and `sentinel`
containers is started with its own command and environment (Secrets resolved, `POD_NAME` from
the downward API, `$(VAR)` expanded). Only what must differ on one machine is overridden, as in
test_chart_commands.py: `REDIS_NODES` gives every pod 127.0.0.1 with ports of its own instead of
its DNS name, `REDIS_DIR` and `SENTINEL_DIR` are directories of the test instead of the volumes,
and `--bind 127.0.0.1` keeps the servers on loopback. The scripts run under busybox's `sh`,
`timeout`, `env`, `awk`, `sed`... as in the `redis:*-alpine` image (Debian's redis-server and
redis-cli stand in for the image's). Then the primary's pod is killed, the
Sentinels promote a replica, and the old pod 0 is started again with the same scripts: it must
come back as a replica of the new primary, never as a second primary.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.deploy.conftest import Manifest, Render, find, one, pod_spec
from tests.deploy.test_chart_commands import container_argv, container_env
from tests.utils.processes import Service, free_port, wait_until

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("redis-server", "redis-cli", "busybox")),
    reason="needs redis-server, redis-cli and busybox (deploy/local/system-deps.sh test)",
)
# What the scripts call besides redis-cli/redis-server: busybox applets, as in the alpine image.
APPLETS = ("sh", "timeout", "env", "awk", "sed", "grep", "dirname", "sleep", "mv", "cat")

# The chart's values, with Sentinel's timings shortened so the failover takes seconds.
VALUES: dict[str, Any] = {
    "redis": {
        "mode": "sentinel",
        "sentinel": {"downAfterMilliseconds": 1000, "failoverTimeout": 3000},
    }
}
CONFIG_MOUNT = "/etc/redis"
PODS = 3


class Pod:
    """One Redis pod of the StatefulSet: its two containers as local processes."""

    def __init__(self, cluster: LocalSentinelSet, ordinal: int) -> None:
        self.cluster = cluster
        self.ordinal = ordinal
        self.name = f"courier-redis-{ordinal}"
        self.port = free_port()
        self.sentinel_port = free_port()
        self.dir = cluster.workdir / self.name
        self.config_dir = self.dir / "etc-redis"
        self.redis: Service | None = None
        self.sentinel: Service | None = None
        self.starts = 0

    def env(self, container: dict[str, Any]) -> dict[str, str]:
        env = container_env(self.cluster.manifests, container, {"metadata.name": self.name})
        env["REDIS_NODES"] = self.cluster.local_nodes()
        env["REDIS_DIR"] = str(self.dir / "data")
        env["SENTINEL_DIR"] = str(self.dir / "sentinel")
        return {"PATH": f"{self.cluster.applets}{os.pathsep}{os.environ['PATH']}", **env}

    def argv(self, container: dict[str, Any], env: dict[str, str]) -> list[str]:
        return [self.relocate(arg) for arg in container_argv(container, env)]

    def relocate(self, arg: str) -> str:
        """The ConfigMap volume's mount path becomes this pod's copy of its files."""
        return arg.replace(CONFIG_MOUNT, str(self.config_dir))

    def start(self) -> None:
        """Both containers, started together as the kubelet does."""
        self.starts += 1
        for volume in ("data", "sentinel"):  # the PVC and the emptyDir
            (self.dir / volume).mkdir(parents=True, exist_ok=True)
        # The ConfigMap volume holds the ConfigMap's text at every start: a CONFIG REWRITE
        # (Sentinel sends one with each REPLICAOF) fails on the read-only mount in a pod, so
        # here the files are written afresh rather than kept from a previous life.
        self.config_dir.mkdir(exist_ok=True)
        for name, text in self.cluster.config.items():
            (self.config_dir / name).write_text(text)
        for name in ("redis", "sentinel"):
            self.start_container(name)

    def start_container(self, name: str) -> None:
        """One container (re)started by the kubelet, with its command and environment."""
        container = self.cluster.container(name)
        env = self.env(container)
        argv = [*self.argv(container, env), "--bind", "127.0.0.1"]
        log = self.dir / f"{name}-{self.starts}-{len(list(self.dir.glob(name + '-*.log')))}.log"
        setattr(self, name, Service(argv, env, log))

    def kill(self) -> None:
        """The pod is gone at once (its node died): SIGKILL to both containers."""
        for name in ("redis", "sentinel"):
            service = getattr(self, name)
            if service is not None:
                service.kill()
                setattr(self, name, None)

    def stop(self) -> None:
        for name in ("sentinel", "redis"):
            service = getattr(self, name)
            if service is not None:
                service.stop()
                setattr(self, name, None)

    def ready(self, probe: str) -> subprocess.CompletedProcess[str]:
        """The container's readiness probe, run with its own command and environment."""
        container = self.cluster.container(probe)
        command = container["readinessProbe"]["exec"]["command"]
        env = self.env(container)
        return subprocess.run(
            [self.relocate(arg) for arg in command],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )

    def data(self) -> redis.Redis:
        return redis.Redis(
            port=self.port, password=self.cluster.password, socket_timeout=2, decode_responses=True
        )

    def sentinel_client(self) -> redis.Redis:
        return redis.Redis(
            port=self.sentinel_port,
            password=self.cluster.sentinel_password,
            socket_timeout=2,
            decode_responses=True,
        )

    def replication(self) -> dict[str, Any] | None:
        try:
            with self.data() as client:
                info: dict[str, Any] = client.info("replication")
                return info
        except redis.RedisError:
            return None

    def log(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.dir.glob("*.log"))
        )


class LocalSentinelSet:
    """The StatefulSet's three pods as processes; `with` stops whatever still runs."""

    def __init__(self, manifests: list[Manifest], workdir: Path) -> None:
        self.manifests = manifests
        self.workdir = workdir
        self.config = one(manifests, "ConfigMap", "courier-redis")["data"]
        self.applets = workdir / "busybox"
        self.applets.mkdir()
        busybox = shutil.which("busybox")
        assert busybox
        for applet in APPLETS:
            (self.applets / applet).symlink_to(busybox)
        secret = one(manifests, "Secret", "courier-redis")["data"]["redis-password"]
        self.password = base64.b64decode(secret).decode()
        sentinel_env = {e["name"]: e.get("value") for e in self.container("sentinel")["env"]}
        self.master = str(sentinel_env["SENTINEL_MASTER"])
        # The chart gives the Sentinels the Redis password, or none with auth disabled.
        self.sentinel_password = self.password if "SENTINEL_PASSWORD" in sentinel_env else None
        self.pods = [Pod(self, i) for i in range(PODS)]

    def __enter__(self) -> LocalSentinelSet:
        return self

    def __exit__(self, *exc: object) -> None:
        for pod in self.pods:
            pod.stop()

    def container(self, name: str) -> dict[str, Any]:
        spec = pod_spec(one(self.manifests, "StatefulSet", "courier-redis"))
        return dict(next(c for c in spec["containers"] if c["name"] == name))

    def local_nodes(self) -> str:
        return " ".join(f"127.0.0.1:{p.port}:{p.sentinel_port}" for p in self.pods)

    def live(self) -> list[Pod]:
        return [p for p in self.pods if p.redis is not None]

    def named_primaries(self) -> set[tuple[str, int]]:
        """The primary each live Sentinel names (an unanswering one counts as a disagreement)."""
        named: set[tuple[str, int]] = set()
        for pod in self.live():
            try:
                with pod.sentinel_client() as client:
                    address = client.sentinel_get_master_addr_by_name(self.master)
            except redis.RedisError:
                address = None
            named.add((str(address[0]), int(address[1])) if address else ("", 0))
        return named

    def settled_on(self) -> Pod | None:
        """The primary, once every live Sentinel names the same one, it says it is the
        primary and counts every other live Redis as a good replica (min-replicas-to-write:
        it takes writes), each of them follows it with the link up, and each Sentinel sees
        every live replica and every other live Sentinel."""
        primary = self._agreed_primary()
        if primary is None:
            return None
        others = [p for p in self.live() if p is not primary]
        info = primary.replication() or {}
        if info.get("role") != "master":
            return None
        # Good replicas are recounted every second from their acknowledgements.
        if int(info.get("min_slaves_good_slaves", 0)) != len(others):
            return None
        if not all(self._follows(pod, primary) for pod in others):
            return None
        replicas = {p.port for p in others}
        sentinels = {p.sentinel_port for p in self.live()}
        for pod in self.live():
            try:
                with pod.sentinel_client() as client:
                    seen = self._up(client.sentinel_slaves(self.master))
                    peers = self._up(client.sentinel_sentinels(self.master))
            except redis.RedisError:
                return None
            if seen != replicas or peers != sentinels - {pod.sentinel_port}:
                return None
        return primary

    def _agreed_primary(self) -> Pod | None:
        named = self.named_primaries()
        if len(named) != 1:
            return None
        ((host, port),) = named
        pod = next((p for p in self.live() if p.port == port), None)
        return pod if host == "127.0.0.1" else None

    @staticmethod
    def _follows(pod: Pod, primary: Pod) -> bool:
        info = pod.replication() or {}
        return (
            info.get("role") == "slave"
            and int(info.get("master_port", 0)) == primary.port
            and info.get("master_link_status") == "up"
        )

    @staticmethod
    def _up(entries: Any) -> set[int]:
        """Ports of the replicas or other Sentinels a Sentinel knows and does not think down
        (it remembers dead ones, flagged, until a SENTINEL RESET)."""
        return {
            int(entry["port"])
            for entry in entries
            if not set(entry["flags"].split(",")) & {"s_down", "o_down", "disconnected"}
        }

    def wait_settled(self, what: str, timeout: float = 60) -> Pod:
        try:
            return wait_until(self.settled_on, timeout, what, interval=0.2)
        except TimeoutError as exc:
            logs = "\n".join(pod.log() for pod in self.pods)
            raise AssertionError(f"{exc}\n{logs}") from exc


@pytest.fixture()
def manifests(render: Render) -> list[Manifest]:
    return render(VALUES)


@pytest.fixture()
def pods(manifests: list[Manifest], tmp_path: Path) -> Iterator[LocalSentinelSet]:
    with LocalSentinelSet(manifests, tmp_path) as cluster:
        yield cluster


def masters(cluster: LocalSentinelSet) -> list[str]:
    return [p.name for p in cluster.live() if (p.replication() or {}).get("role") == "master"]


def test_the_rendered_pods_elect_pod_0_then_fail_over_and_pod_0_rejoins_as_a_replica(
    pods: LocalSentinelSet,
) -> None:
    # First boot, every pod at once (harder than the StatefulSet's one-by-one start): no
    # Sentinel knows a primary yet, so pod 0 is the primary and the others its replicas.
    for pod in pods.pods:
        pod.start()
    first = pods.wait_settled("the three pods to settle on a primary")
    assert first is pods.pods[0]
    assert masters(pods) == ["courier-redis-0"]
    for pod in pods.pods:
        assert pod.ready("redis").returncode == 0, pod.ready("redis").stderr
        assert pod.ready("sentinel").returncode == 0, pod.ready("sentinel").stderr

    # What the rendered redis.conf promises, as the running servers report it.
    with first.data() as client:
        config = client.config_get("*")
        assert config["appendonly"] == "yes"
        assert config["maxmemory-policy"] == "noeviction"
        assert int(config["maxmemory"]) == int(512 * 2**20 * 0.8)
        assert config["min-replicas-to-write"] == "1"
        client.set("written-before-the-failover", "kept")
        assert client.wait(2, 5000) == 2
    with pods.pods[1].data() as client:
        assert client.config_get("replica-announce-ip")["replica-announce-ip"] == "127.0.0.1"

    # The primary's pod dies (node lost): both its containers are SIGKILLed.
    first.kill()
    # Until the failover, the replicas have lost their primary: not ready.
    survivors = pods.pods[1:]
    wait_until(
        lambda: all(p.ready("redis").returncode != 0 for p in survivors),
        30,
        "the replicas to report their link down",
        interval=0.2,
    )
    second = pods.wait_settled("the surviving Sentinels to promote a replica")
    assert second in survivors
    assert masters(pods) == [second.name]
    for pod in survivors:
        assert pod.ready("redis").returncode == 0, pod.ready("redis").stderr

    # Pod 0 comes back on its volume (data kept) with a new emptyDir for its Sentinel, and
    # runs the same start scripts: the Sentinels name the new primary, so it follows it.
    shutil.rmtree(first.dir / "sentinel")
    first.start()
    # Its role from its first answer on: the start must make it a replica, not leave the
    # Sentinels to demote a second primary afterwards (which they would, a second later,
    # after it had taken writes).
    roles = [wait_until(first.replication, 30, "pod 0's Redis to answer")["role"]]

    def rejoined() -> Pod | None:
        roles.append((first.replication() or {}).get("role", "?"))
        return pods.settled_on()

    third = wait_until(rejoined, 90, "pod 0 to rejoin", interval=0.05)
    assert "master" not in roles, f"pod 0 was a primary in {roles.count('master')} polls"
    assert third is second, "a restarted pod 0 must not take the primary role back"
    assert masters(pods) == [second.name], "two primaries: split brain"
    info = first.replication() or {}
    assert (info["role"], int(info["master_port"])) == ("slave", second.port)
    redis_log = max(first.dir.glob("redis-*.log")).read_text()
    assert f"starting as a replica of 127.0.0.1:{second.port}" in redis_log, redis_log
    # Redis's own record: a Sentinel demoting it would have logged its REPLICAOF command (the
    # roles polled above may miss a demotion that follows the start by a few milliseconds).
    assert "enabled (user request" not in redis_log, redis_log
    assert first.ready("redis").returncode == 0
    with first.data() as client:
        assert client.get("written-before-the-failover") == "kept"
    # Its Sentinel monitors the new primary too (asked the others, not the first-boot default).
    with first.sentinel_client() as client:
        assert client.sentinel_get_master_addr_by_name(pods.master) == ("127.0.0.1", second.port)


def test_a_primary_restarted_while_the_sentinels_fail_it_over_comes_back_as_a_replica(
    pods: LocalSentinelSet,
) -> None:
    """The Redis container of the primary restarts (a crash, a rolling update) and is away
    long enough for the Sentinels to flag it down: they still name it until the failover
    switches, so the start must wait for their verdict rather than take the primary role."""
    for pod in pods.pods:
        pod.start()
    primary = pods.wait_settled("the three pods to settle on a primary")
    assert primary.redis is not None
    primary.redis.kill()
    primary.redis = None

    def flagged_down() -> bool:
        with contextlib.suppress(redis.RedisError), primary.sentinel_client() as client:
            state = client.sentinel_master(pods.master)
            return bool(state["is_sdown"]) and (
                str(state["ip"]),
                int(state["port"]),
            ) == ("127.0.0.1", primary.port)
        return False

    wait_until(flagged_down, 30, "the Sentinels to flag the primary down", interval=0.02)
    primary.start_container("redis")
    roles = [wait_until(primary.replication, 30, "the restarted Redis to answer")["role"]]

    def rejoined() -> Pod | None:
        roles.append((primary.replication() or {}).get("role", "?"))
        return pods.settled_on()

    new = wait_until(rejoined, 90, "the restarted Redis to rejoin", interval=0.05)
    assert new is not primary
    assert "master" not in roles, f"the old primary was a primary in {roles.count('master')} polls"
    log = max(primary.dir.glob("redis-*.log")).read_text()
    assert "waiting for their failover" in log, log
    assert f"starting as a replica of 127.0.0.1:{new.port}" in log, log
    assert "enabled (user request" not in log, log


def test_without_sentinel_auth_the_pods_elect_and_answer_without_a_password(
    render: Render, tmp_path: Path
) -> None:
    values = {"redis": {**VALUES["redis"], "sentinel": {**VALUES["redis"]["sentinel"]}}}
    values["redis"]["sentinel"]["auth"] = {"enabled": False}
    with LocalSentinelSet(render(values), tmp_path) as cluster:
        assert cluster.sentinel_password is None
        for pod in cluster.pods:
            pod.start()
        assert cluster.wait_settled("the pods to settle without Sentinel auth") is cluster.pods[0]
        for pod in cluster.pods:
            assert pod.ready("sentinel").returncode == 0, pod.ready("sentinel").stderr


def test_readiness_reports_a_primary_and_in_sync_replicas_only(pods: LocalSentinelSet) -> None:
    for pod in pods.pods:
        pod.start()
    primary = pods.wait_settled("the three pods to settle on a primary")
    replica = next(p for p in pods.pods if p is not primary)
    assert primary.ready("redis").returncode == 0
    assert replica.ready("redis").returncode == 0
    # A replica cut off from its primary (pointed at a port where nothing listens).
    with replica.data() as client:
        client.replicaof("127.0.0.1", free_port())
    wait_until(
        lambda: replica.ready("redis").returncode != 0, 30, "the cut-off replica to be unready"
    )
    verdict = replica.ready("redis")
    assert "neither the primary nor a replica in sync" in verdict.stderr
    # A Redis that does not answer at all is not ready either.
    replica.kill()
    assert replica.ready("redis").returncode != 0


def test_rendered_clients_find_the_primary_through_the_rendered_sentinels(
    pods: LocalSentinelSet, manifests: list[Manifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API's own environment (its Sentinel list relocated to the local pods) reaches the
    primary through Courier's client."""
    from worker.core.redis_client import create_redis
    from worker.core.settings import Settings

    for pod in pods.pods:
        pod.start()
    primary = pods.wait_settled("the three pods to settle on a primary")
    (api,) = pod_spec(one(manifests, "Deployment", "courier-api"))["containers"]
    env = container_env(manifests, api)
    rendered = env["COURIER_REDIS_SENTINELS"].split(",")
    assert rendered == [
        f"courier-redis-{i}.courier-redis-headless.courier.svc:26379" for i in range(PODS)
    ]
    env["COURIER_REDIS_SENTINELS"] = ",".join(f"127.0.0.1:{p.sentinel_port}" for p in pods.pods)
    for name, value in env.items():
        if name.startswith("COURIER_REDIS_"):
            monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.redis_sentinel_master == "courier"
    client = create_redis(settings)
    with contextlib.closing(client):
        client.set("through-sentinel", "yes")
        assert client.info("server")["tcp_port"] == primary.port


def test_every_redis_pod_of_the_render_runs_both_containers(manifests: list[Manifest]) -> None:
    statefulset = one(manifests, "StatefulSet", "courier-redis")
    assert statefulset["spec"]["replicas"] == PODS
    names = [c["name"] for c in pod_spec(statefulset)["containers"]]
    assert names == ["redis", "sentinel"]
    assert find(manifests, "Service", "courier-redis") == []
