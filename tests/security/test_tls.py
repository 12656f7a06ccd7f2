"""Redis over TLS (``rediss://``) end to end: API, worker, beat, metrics and health checks.

A throw-away CA signs a certificate for 127.0.0.1; redis-server serves TLS only; every Courier
client verifies the server against that CA.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import settings_from, wait_for_status
from tests.utils.processes import (
    Service,
    celery_beat,
    celery_worker,
    courier_env,
    free_port,
    http_ok,
    wait_until,
)
from tests.utils.prom import scrape, total
from worker.core.names import DEFAULT_QUEUE, RECONCILE_LAST_RUN_KEY


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("tls")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.pem", "-days", "1", "-subj", "/CN=courier-test-ca", cwd=tmp)  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
            "server.csr", "-subj", "/CN=127.0.0.1", cwd=tmp)  # fmt: skip
    (tmp / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "1", "-extfile", "ext.cnf",
            cwd=tmp)  # fmt: skip
    port = free_port()
    server = Service(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(tmp / "server.pem"), "--tls-key-file", str(tmp / "server.key"),
         "--tls-ca-cert-file", str(tmp / "ca.pem"), "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--dir", str(tmp)],
        {},
        tmp / "redis.log",
    )  # fmt: skip
    url = f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={tmp / 'ca.pem'}"
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)

    def pings() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    try:
        wait_until(pings, 10, "redis-server over TLS")
        plain = redis.Redis(port=port, socket_connect_timeout=0.5, socket_timeout=0.5)
        with pytest.raises(redis.RedisError):
            plain.ping()  # the port speaks TLS only
        yield url
    finally:
        client.close()
        server.stop()


def test_everything_talks_to_redis_over_tls(tls_redis_url: str, tmp_path: Path) -> None:
    metrics_port = free_port()
    env = {
        "COURIER_REDIS_URL": tls_redis_url,
        "COURIER_WORKER_METRICS_PORT": str(metrics_port),
        "COURIER_RECONCILE_INTERVAL_SECONDS": "1",
        "COURIER_BEAT_SCHEDULE_FILE": str(tmp_path / "schedule"),
    }
    before = time.time()
    with (
        celery_worker(courier_env(env), tmp_path / "worker.log", "tls"),
        celery_beat(courier_env(env), tmp_path / "beat.log"),
    ):
        with TestClient(create_app(settings_from(env))) as api:
            assert api.get("/readyz").status_code == 200
            task_id = api.post("/v1/tasks/noop", json={"echo": "encrypted"}).json()["id"]
            assert wait_for_status(api, task_id, timeout=60)["result"] == "encrypted"
        metrics = f"http://127.0.0.1:{metrics_port}"
        wait_until(lambda: http_ok(f"{metrics}/readyz"), 30, "the worker")
        samples = scrape(f"{metrics}/metrics")
        assert total(samples, "celery_active_worker_count", queue_name=DEFAULT_QUEUE) == 1
        client = redis.Redis.from_url(tls_redis_url)
        wait_until(
            lambda: float(client.get(RECONCILE_LAST_RUN_KEY) or 0) > before, 30, "beat's reconcile"
        )
        client.close()
