"""The images the Dockerfile builds, run the way Kubernetes runs them.

``deploy/images/build.sh`` (what ``make images`` runs, cached between runs) builds both targets;
podman on that script's storage runs them with a read-only root file system, tmpfs at ``/tmp``
and ``/run/metrics`` (the pod's emptyDirs), UID 10001 and no capabilities. The API and worker
containers get no command, so podman runs each image's own configured one: the test proves the
Dockerfile's CMD, not a command of its own. A task posted to the API container over HTTP is run
by the worker container through a redis-server of the test's own, and every container stops
cleanly on SIGTERM, which only reaches the servers because they run in exec form as PID 1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
import redis

from tests.utils.processes import ROOT, RedisServer, free_port, wait_until
from worker.core.names import RECONCILE_LAST_RUN_KEY

BUILD = ROOT / "deploy" / "images" / "build.sh"
# A tag of the test's own: `make images` beside a test run does not swap images under it,
# while both share the cached layers.
TAG = "test"
IMAGES = {target: f"localhost/courier-{target}:{TAG}" for target in ("api", "worker")}
STOP_TIMEOUT = 20

pytestmark = [
    pytest.mark.images,
    # The module's first test also pays for the build: a minute or two cold, seconds warm.
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        shutil.which("buildah") is None and not os.environ.get("CI"),
        reason="buildah is not installed (`make images` installs it); CI always runs this test",
    ),
]


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """podman on build.sh's storage, with the runtime settings this kind of host needs."""
    return subprocess.run(
        [str(BUILD), "podman", *args], capture_output=True, text=True, timeout=timeout
    )


def podman_ok(*args: str, timeout: float = 120) -> str:
    result = podman(*args, timeout=timeout)
    assert result.returncode == 0, f"podman {' '.join(args)}:\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    log = tmp_path_factory.mktemp("images") / "build.log"
    env = {**os.environ, "COURIER_IMAGES_TAG": TAG}
    with log.open("w") as out:
        result = subprocess.run(
            [str(BUILD), *IMAGES], stdout=out, stderr=subprocess.STDOUT, env=env, timeout=840
        )
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:])
    assert result.returncode == 0, f"build.sh failed:\n{tail}"
    return IMAGES


def image_config(image: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(podman_ok("image", "inspect", image))[0]["Config"]
    return config


class Container:
    """One container of an image, run with its own command, as a pod would run it."""

    def __init__(
        self, image: str, env: Mapping[str, str], log: Path, command: Sequence[str] = ()
    ) -> None:
        self.name = f"courier-test-{uuid.uuid4().hex[:12]}"
        self.log = log
        self._out: IO[bytes] = log.open("wb")
        env_args = [arg for key, value in env.items() for arg in ("--env", f"{key}={value}")]
        # Without a command podman runs the image's own Entrypoint/Cmd (and always its Env);
        # beat and Flower are what the worker image runs by command, as the chart does.
        self.process = subprocess.Popen(
            [
                str(BUILD),
                "podman",
                "run",
                "--rm",
                "--name",
                self.name,
                "--pull=never",
                "--network=host",
                "--user=10001",
                "--read-only",
                "--read-only-tmpfs=false",
                "--tmpfs=/tmp:rw,mode=1777",
                # U: owned by the container's user, as an emptyDir with fsGroup is.
                "--tmpfs=/run/metrics:rw,mode=0700,U",
                "--cap-drop=ALL",
                "--security-opt=no-new-privileges",
                *env_args,
                image,
                *command,
            ],
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def running(self) -> bool:
        return self.process.poll() is None and podman("exec", self.name, "true").returncode == 0

    def exec(self, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
        return podman("exec", *([f"--user={user}"] if user else []), self.name, *args)

    def stop(self) -> tuple[int, float]:
        """SIGTERM (the image's stop signal), then the exit code and how long it took."""
        started = time.monotonic()
        podman("stop", f"--time={STOP_TIMEOUT}", self.name, timeout=STOP_TIMEOUT + 30)
        code = self.process.wait(30)
        return code, time.monotonic() - started

    def remove(self) -> None:
        podman("rm", "--force", "--ignore", self.name)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._out.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _finished(status_url: str) -> dict[str, Any] | None:
    body: dict[str, Any] = httpx.get(status_url, timeout=5).json()
    return body if body["status"] in {"succeeded", "failed", "revoked"} else None


def _pid1(container: Container) -> dict[str, Any]:
    """Who PID 1 is in the container: its command line and UID."""
    probe = (
        "import json; "
        "cmd = open('/proc/1/cmdline').read().split(chr(0)); "
        "uid = [l.split()[1] for l in open('/proc/1/status') if l.startswith('Uid:')][0]; "
        "print(json.dumps({'cmdline': [c for c in cmd if c], 'uid': int(uid)}))"
    )
    result = container.exec("python3", "-c", probe)
    assert result.returncode == 0, result.stderr
    info: dict[str, Any] = json.loads(result.stdout)
    return info


def test_images_declare_exec_form_commands_uid_10001_and_the_metrics_dir(
    images: dict[str, str],
) -> None:
    api, worker = image_config(images["api"]), image_config(images["worker"])
    assert api["Cmd"] == ["gunicorn", "-c", "python:app.gunicorn_conf"]
    # The chart's own worker command: the supervisor, which execs Celery under prefork.
    assert worker["Cmd"] == ["python", "-m", "worker.supervisor", "--loglevel=INFO"]
    for config in (api, worker):
        # No entrypoint wrapper: the command itself is PID 1 and gets SIGTERM.
        assert not config.get("Entrypoint")
        assert config["User"] == "10001:10001"
        assert "PROMETHEUS_MULTIPROC_DIR=/run/metrics" in config["Env"]


def test_worker_image_leaves_out_the_api_and_neither_ships_compilers_pip_or_the_ca(
    images: dict[str, str],
) -> None:
    probe = (
        "import importlib.util as u, json, os, shutil; "
        "m = os.stat('/run/metrics'); "
        "print(json.dumps({"
        "'app': u.find_spec('app') is not None, 'worker': u.find_spec('worker') is not None, "
        "'pip': u.find_spec('pip') is not None, "
        "'compilers': [c for c in ('cc', 'gcc', 'g++', 'clang', 'make') if shutil.which(c)], "
        "'metrics_dir': [m.st_uid, m.st_gid], "
        "'build_secret': os.path.exists('/run/secrets/ca')}))"
    )
    found = {
        target: json.loads(podman_ok("run", "--rm", "--pull=never", image, "python3", "-c", probe))
        for target, image in images.items()
    }
    assert found["worker"]["app"] is False
    assert found["api"]["app"] is True
    for target in images:
        assert found[target]["worker"] is True
        assert found[target]["pip"] is False
        assert found[target]["compilers"] == []
        assert found[target]["metrics_dir"] == [10001, 10001]
        # The proxy's CA reached pip during the build only.
        assert found[target]["build_secret"] is False


def test_a_task_posted_to_the_api_container_runs_in_the_worker_container(
    images: dict[str, str], own_redis: RedisServer, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = {"COURIER_REDIS_URL": own_redis.url}
    # The chart's default pool: the image's command runs the supervisor and its workers.
    worker = Container(
        images["worker"],
        {**settings, "COURIER_WORKER_POOL": "inline", "COURIER_WORKER_METRICS_PORT": "0"},
        tmp_path / "worker.log",
    )
    api = Container(
        images["api"],
        {**settings, "COURIER_API_BIND": f"127.0.0.1:{port}", "COURIER_API_WORKERS": "1"},
        tmp_path / "api.log",
    )
    try:
        wait_until(
            lambda: _answers(f"{url}/readyz"), 90, f"the API container on {url}", interval=0.5
        )
        wait_until(worker.running, 60, "the worker container", interval=0.5)

        accepted = httpx.post(f"{url}/v1/tasks/noop", json={"echo": "from-image"}, timeout=10)
        assert accepted.status_code == 202, accepted.text
        task_id = accepted.json()["id"]
        done = wait_until(
            lambda: _finished(f"{url}/v1/tasks/{task_id}"),
            90,
            "the worker container to run the task",
            interval=0.25,
        )
        assert (done["status"], done["result"]) == ("succeeded", "from-image"), worker.output()

        for container, command in ((api, ["gunicorn"]), (worker, ["-m", "worker.supervisor"])):
            pid1 = _pid1(container)
            assert pid1["uid"] == 10001
            names = [Path(arg).name for arg in pid1["cmdline"][:3]]
            assert any(names[i : i + len(command)] == command for i in range(3)), pid1
            # Even root cannot write outside the tmpfs mounts: the services above ran with
            # nothing writable but /tmp and /run/metrics.
            write = container.exec("touch", "/opt/venv/probe", user="0")
            assert write.returncode != 0
            assert "Read-only file system" in write.stderr

        for container, goodbye in ((api, "Shutting down: Master"), (worker, "Warm shutdown")):
            code, took = container.stop()
            assert code == 0, container.output()
            assert took < STOP_TIMEOUT, f"took {took:.1f}s: SIGTERM did not reach PID 1"
            assert goodbye in container.output()
            assert '"level": "ERROR"' not in container.output()
    finally:
        api.remove()
        worker.remove()


def test_the_worker_image_runs_beat_and_flower_by_command_read_only(
    images: dict[str, str], own_redis: RedisServer, tmp_path: Path
) -> None:
    port = free_port()
    settings = {"COURIER_REDIS_URL": own_redis.url, "COURIER_RECONCILE_INTERVAL_SECONDS": "1"}
    app = ["celery", "-A", "worker.celery_app"]
    worker = Container(images["worker"], settings, tmp_path / "worker.log")
    # beat keeps its schedule file in /tmp (COURIER_BEAT_SCHEDULE_FILE): the root is read-only.
    beat = Container(
        images["worker"], settings, tmp_path / "beat.log", [*app, "beat", "--loglevel=INFO"]
    )
    flower = Container(
        images["worker"],
        settings,
        tmp_path / "flower.log",
        [*app, "flower", "--address=127.0.0.1", f"--port={port}"],
    )
    client = redis.Redis.from_url(own_redis.url)
    try:
        # The periodic reconcile, sent by the beat container and run by the worker container,
        # stamps its key: beat and worker work together from the one image.
        wait_until(
            lambda: client.exists(RECONCILE_LAST_RUN_KEY), 90, "beat's reconcile run", interval=0.5
        )
        wait_until(
            lambda: _answers(f"http://127.0.0.1:{port}/healthcheck"), 90, "Flower", interval=0.5
        )
        for container in (beat, flower, worker):
            code, took = container.stop()
            assert took < STOP_TIMEOUT, f"took {took:.1f}s: SIGTERM did not reach PID 1"
            assert code == 0, container.output()
    finally:
        client.close()
        for container in (beat, flower, worker):
            container.remove()
