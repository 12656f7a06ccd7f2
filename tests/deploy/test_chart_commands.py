"""The chart's own commands really start and work together.

The api, worker, beat and Flower containers of the default render are run here as processes, with
the command, args and environment the kubelet would give them (ConfigMap and Secret values
resolved, `$(VAR)` expanded), against a local redis-server that requires the chart's generated
password. Only what must differ on one machine is overridden: the Redis host and port, listen
ports, and writable paths. Then the `helm test` pod's own script runs against the API. A chart
whose commands or variables drift from the code fails here.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deploy.conftest import VALUE_MATRIX, Manifest, Render, expand_vars, find, one, pod_spec
from tests.utils.processes import (
    RedisServer,
    Service,
    child_pids,
    courier_env,
    free_port,
    wait_until,
)
from worker.celery_config import create_celery_app
from worker.core.settings import Settings

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="needs redis-server (.ci/run installs it)"
)

VENV_BIN = Path(sys.executable).parent


def container_env(
    manifests: list[Manifest], container: dict[str, Any], fields: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment the kubelet builds: envFrom first, then env in order with $(VAR);
    `fields` gives the downward API's values (e.g. `metadata.name`)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(one(manifests, "ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            data = one(manifests, "Secret", source["secretRef"]["name"])["data"]
            env.update({k: base64.b64decode(v).decode() for k, v in data.items()})
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = expand_vars(entry["value"], env)
            continue
        ref = entry["valueFrom"]
        if "fieldRef" in ref:
            env[entry["name"]] = (fields or {})[ref["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in ref:
            data = one(manifests, "Secret", ref["secretKeyRef"]["name"])["data"]
            env[entry["name"]] = base64.b64decode(data[ref["secretKeyRef"]["key"]]).decode()
        else:
            data = one(manifests, "ConfigMap", ref["configMapKeyRef"]["name"])["data"]
            env[entry["name"]] = data[ref["configMapKeyRef"]["key"]]
    return env


def container_argv(container: dict[str, Any], env: dict[str, str]) -> list[str]:
    return [expand_vars(arg, env) for arg in [*container["command"], *container.get("args", [])]]


def the_container(manifests: list[Manifest], kind: str, name: str) -> dict[str, Any]:
    (container,) = pod_spec(one(manifests, kind, name))["containers"]
    return dict(container)


def ok_response(url: str, **kwargs: Any) -> httpx.Response | None:
    """The response when `url` answers 200, else None (for wait_until)."""
    response = _answers(url, **kwargs)
    return response if response is not None and response.status_code == 200 else None


def relocate_redis(url: str, port: int) -> str:
    """The in-cluster Service host:port becomes the local server; the password stays."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{netloc[0]}@127.0.0.1:{port}").geturl()


class Stack:
    """The rendered containers running as local processes."""

    def __init__(self, manifests: list[Manifest], workdir: Path) -> None:
        self.manifests = manifests
        self.workdir = workdir
        self.services: list[Service] = []
        self.password = ""
        self.redis_port = free_port()
        self.api_port = free_port()
        self.worker_metrics_port = free_port()
        self.flower_port = free_port()
        self.api_key = ""
        self.worker: Service
        self.beat: Service

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env_for(self, kind: str, name: str, **overrides: str) -> tuple[list[str], dict[str, str]]:
        container = the_container(self.manifests, kind, name)
        env = container_env(self.manifests, container)
        env["COURIER_REDIS_URL"] = relocate_redis(env["COURIER_REDIS_URL"], self.redis_port)
        env.update(overrides)
        full = courier_env(env)
        full["PATH"] = f"{VENV_BIN}{os.pathsep}{full.get('PATH', '')}"
        return container_argv(container, env), full

    def start(self, argv: list[str], env: Mapping[str, str], log: str) -> Service:
        service = Service(argv, env, self.workdir / log)
        self.services.append(service)
        return service

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()


@pytest.fixture(scope="module")
def stack(
    default_manifests: list[Manifest], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("chart-stack")
    stack = Stack(default_manifests, workdir)
    stack.password = base64.b64decode(
        one(default_manifests, "Secret", "courier-redis")["data"]["redis-password"]
    ).decode()
    # Redis with the chart's generated password: the URL wiring must carry it.
    redis_server = RedisServer(
        workdir / "redis", port=stack.redis_port, extra_args=("--requirepass", stack.password)
    )
    redis_server.start()
    try:
        yield stack
    finally:
        stack.stop()
        redis_server.stop()


def _answers(url: str, **kwargs: Any) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2, **kwargs)
    except httpx.HTTPError:
        return None


@pytest.fixture(scope="module")
def running(stack: Stack) -> Stack:
    """The rendered api, worker and beat started, and the API ready (Redis reachable)."""
    api_argv, api_env = stack.env_for(
        "Deployment",
        "courier-api",
        COURIER_API_BIND=f"127.0.0.1:{stack.api_port}",
        PROMETHEUS_MULTIPROC_DIR=str(_mkdir(stack.workdir / "api-metrics")),
    )
    worker_argv, worker_env = stack.env_for(
        "Deployment",
        "courier-worker",
        COURIER_WORKER_METRICS_PORT=str(stack.worker_metrics_port),
        PROMETHEUS_MULTIPROC_DIR=str(_mkdir(stack.workdir / "worker-metrics")),
    )
    beat_argv, beat_env = stack.env_for(
        "Deployment",
        "courier-beat",
        COURIER_BEAT_SCHEDULE_FILE=str(stack.workdir / "beat-schedule"),
        PROMETHEUS_MULTIPROC_DIR=str(_mkdir(stack.workdir / "beat-metrics")),
    )
    # The commands are the chart's, untouched.
    assert api_argv == ["gunicorn", "-c", "python:app.gunicorn_conf"]
    assert worker_argv[:3] == ["python", "-m", "worker.supervisor"]  # worker.pool: inline
    assert beat_argv[:4] == ["celery", "-A", "worker.celery_app", "beat"]
    assert f":{stack.password}@127.0.0.1:" in api_env["COURIER_REDIS_URL"]
    stack.api_key = api_env["COURIER_API_KEYS"].split(",")[0]

    api = stack.start(api_argv, api_env, "api.log")
    stack.worker = stack.start(worker_argv, worker_env, "worker.log")
    stack.beat = stack.start(beat_argv, beat_env, "beat.log")
    wait_until(
        lambda: ok_response(f"{stack.api_url}/readyz"),
        45,
        f"the API's /readyz (log: {api.log})",
    )
    return stack


def test_rendered_api_and_worker_run_a_task_with_the_generated_api_key(running: Stack) -> None:
    headers = {"Authorization": f"Bearer {running.api_key}"}
    response = httpx.post(
        f"{running.api_url}/v1/tasks/noop", json={"echo": "chart"}, headers=headers
    )
    assert response.status_code == 202, response.text
    task_id = response.json()["id"]

    def finished() -> dict[str, Any] | None:
        url = f"{running.api_url}/v1/tasks/{task_id}"
        body: dict[str, Any] = httpx.get(url, headers=headers).json()
        return body if body.get("status") in {"succeeded", "failed", "revoked"} else None

    body = wait_until(finished, 60, f"task {task_id} (worker log: {running.worker.log})")
    assert body["status"] == "succeeded", body
    assert body["result"] == "chart"


def test_rendered_api_refuses_requests_without_the_api_key(running: Stack) -> None:
    from worker.core.settings import Settings

    if "api_keys" not in Settings.model_fields:
        pytest.skip("this Courier has no COURIER_API_KEYS setting yet")
    response = httpx.post(f"{running.api_url}/v1/tasks/noop", json={"echo": "no key"})
    assert response.status_code == 401, response.text


def test_rendered_worker_answers_its_probes(
    running: Stack, default_manifests: list[Manifest]
) -> None:
    container = the_container(default_manifests, "Deployment", "courier-worker")
    for probe in ("livenessProbe", "readinessProbe"):
        path = container[probe]["httpGet"]["path"]
        url = f"http://127.0.0.1:{running.worker_metrics_port}{path}"
        health = wait_until(
            partial(ok_response, url), 30, f"the worker's {url} ({running.worker.log})"
        )
        assert health.status_code == 200


def test_rendered_inline_worker_runs_concurrency_children_that_answer_as_nodes(
    running: Stack,
) -> None:
    """The default ``worker.pool: inline``: the rendered supervisor starts one inline worker
    per ``worker.concurrency`` (2), each a Celery node of its own."""
    wait_until(
        lambda: len(child_pids(running.worker.pid)) == 2, 60, f"two children ({running.worker.log})"
    )
    _, env = running.env_for("Deployment", "courier-worker")
    app = create_celery_app(Settings(redis_url=env["COURIER_REDIS_URL"]))

    def nodes() -> set[str]:
        return {node.partition("@")[0] for node in app.control.inspect(timeout=3).ping() or {}}

    try:
        wait_until(lambda: nodes() == {"celery-1", "celery-2"}, 60, "both children to answer")
    finally:
        app.close()


def test_rendered_prefork_worker_runs_celery_with_concurrency_pool_processes(
    running: Stack, render: Render
) -> None:
    """``worker.pool: prefork``: celery is PID 1 with ``worker.concurrency`` pool processes,
    one Celery node, and its port says ready."""
    prefork = Stack(render(VALUE_MATRIX["prefork-pool"]), running.workdir)
    prefork.redis_port = running.redis_port
    port = free_port()
    _, inline_env = running.env_for("Deployment", "courier-worker")
    argv, env = prefork.env_for(
        "Deployment",
        "courier-worker",
        COURIER_REDIS_URL=inline_env["COURIER_REDIS_URL"],  # the running Redis's password
        COURIER_WORKER_METRICS_PORT=str(port),
        PROMETHEUS_MULTIPROC_DIR=str(_mkdir(running.workdir / "prefork-metrics")),
    )
    assert argv[:4] == ["celery", "-A", "worker.celery_app", "worker"]
    assert "--concurrency=3" in argv
    worker = prefork.start(argv, env, "prefork-worker.log")
    try:
        url = f"http://127.0.0.1:{port}/readyz"
        wait_until(partial(ok_response, url), 90, f"the prefork pod's /readyz ({worker.log})")
        assert len(child_pids(worker.pid)) == 3
        app = create_celery_app(Settings(redis_url=env["COURIER_REDIS_URL"]))
        try:
            stats = app.control.inspect(timeout=3).stats() or {}
        finally:
            app.close()
        mine = [stat for node, stat in stats.items() if not node.startswith("celery-")]
        assert [stat["pool"]["max-concurrency"] for stat in mine] == [3], stats
    finally:
        prefork.stop()
    assert worker.process.returncode == 0, worker.output()[-2000:]


def test_rendered_beat_starts_and_stays_up(running: Stack) -> None:
    wait_until(lambda: "beat: Starting" in running.beat.output(), 30, "beat to start")
    assert running.beat.process.poll() is None, running.beat.output()[-2000:]


def test_helm_test_pod_script_passes_against_the_rendered_stack(
    running: Stack, default_manifests: list[Manifest]
) -> None:
    """The `helm test` pod's own script, pointed at the local API, sees its task succeed."""
    (pod,) = find(default_manifests, "Pod")
    (container,) = pod_spec(pod)["containers"]
    env = container_env(default_manifests, container)
    env["API_URL"] = running.api_url
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    result = subprocess.run(
        container_argv(container, env), env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "succeeded" in result.stdout


def test_rendered_flower_serves_its_prefix_behind_basic_auth(
    stack: Stack, default_manifests: list[Manifest]
) -> None:
    container = the_container(default_manifests, "Deployment", "courier-flower")
    argv, env = stack.env_for("Deployment", "courier-flower")
    assert "--port=5555" in argv
    argv = [f"--port={stack.flower_port}" if a == "--port=5555" else a for a in argv]
    # Flower binds every interface by default; keep the test's server on loopback.
    argv.append("--address=127.0.0.1")
    flower = stack.start(argv, env, "flower.log")
    health_path = container["livenessProbe"]["httpGet"]["path"]
    base = f"http://127.0.0.1:{stack.flower_port}"
    health = wait_until(
        lambda: ok_response(base + health_path),
        45,
        f"Flower's {health_path} (log: {flower.log})",
    )
    assert health.text.strip() == "OK"
    prefix = health_path.removesuffix("/healthcheck")
    anonymous = _answers(f"{base}{prefix}/workers")
    assert anonymous is not None and anonymous.status_code == 401
    user, _, password = env["FLOWER_BASIC_AUTH"].partition(":")
    authorised = _answers(f"{base}{prefix}/workers", auth=(user, password))
    assert authorised is not None and authorised.status_code == 200


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
