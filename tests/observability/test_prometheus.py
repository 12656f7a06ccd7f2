"""Rules and dashboards against the real thing: promtool, and a live Prometheus that scrapes the
real API (gunicorn) and worker while tasks run, then evaluates every dashboard query and every
rule expression. A query that is invalid, or that finds no series, fails the test."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.utils.live_stack import live_stack
from tests.utils.processes import (
    ROOT,
    RedisServer,
    Service,
    courier_env,
    free_port,
    gunicorn,
    http_ok,
    wait_until,
)
from tests.utils.smtp import SmtpServer
from worker.core.names import DEFAULT_QUEUE

MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "rules" / "courier.rules.yaml"
DASHBOARDS = sorted((MONITORING / "dashboards").glob("*.json"))
# A series a dashboard query reads, with its selector (empty when it has none).
SERIES = re.compile(r"\b((?:celery|courier)[a-z0-9_:]*)(\{[^}]*\}|)")
# What Grafana substitutes before it sends a query.
GRAFANA_VARIABLES = {
    "$__rate_interval": "30s",
    "$queue": ".*",
    "$namespace": ".*",
    "$job": ".*courier.*",  # the dashboards' default
    "${datasource}": "",
}
# The chart's job names (tests/deploy/test_chart.py): celery-mixin's job=~".*celery.*" selects
# the workers'. A third job scrapes the worker again, as a celery-exporter exporting the same
# metric names would be: dashboards and rules must not count it.
API_JOB, WORKER_JOB, OTHER_EXPORTER_JOB = "courier-api", "courier-celery-worker", "celery-exporter"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed (Debian package 'prometheus'; `make test` installs it)"
        )
    return path


def dashboard_queries() -> list[tuple[str, str]]:
    queries = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for variable, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(variable, value)
                queries.append((f"{path.stem}: {panel['title']} [{target['refId']}]", expr))
    return queries


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_rules_are_valid_and_their_unit_tests_pass() -> None:
    check = subprocess.run(
        [tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    tests = subprocess.run(
        [tool("promtool"), "test", "rules", "courier.rules.test.yaml"],
        cwd=MONITORING / "tests",
        capture_output=True,
        text=True,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr


def test_every_alert_has_a_unit_test() -> None:
    tested = set(re.findall(r"alertname: (\w+)", (MONITORING / "tests" / "courier.rules.test.yaml")
                            .read_text()))  # fmt: skip
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert alerts <= tested, alerts - tested


def test_every_rule_reads_courier_jobs_only() -> None:
    """Each series a rule reads is scoped to Courier's jobs (the chart narrows the selector to
    its own two), or is a signal recorded so; celery-exporter's same names are not counted."""
    for rule in rules():
        for metric, selector in SERIES.findall(rule["expr"]):
            assert metric.startswith("courier:") or 'job=~".*courier.*"' in selector, rule


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboards_are_well_formed(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"].startswith("courier-") and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= set(grid) and grid["x"] + grid["w"] <= 24
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"])
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            for metric, selector in SERIES.findall(target["expr"]):
                # Scoped, or another exporter of the same names doubles the figure; a recorded
                # signal (courier:...) is scoped to Courier's jobs by its rule.
                assert 'namespace=~"$namespace"' in selector, (metric, target["expr"])
                assert metric.startswith("courier:") or 'job=~"$job"' in selector, metric


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, smtp_server: SmtpServer) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("prometheus")
    prometheus_bin = tool("prometheus")
    env = {
        "COURIER_EMAIL_BACKEND": "smtp",
        "COURIER_SMTP_HOST": "127.0.0.1",
        "COURIER_SMTP_PORT": str(smtp_server.port),
        "COURIER_RETRY_BACKOFF_SECONDS": "0.05",
    }
    # Every process is stopped on the way out, also when starting a later one failed.
    with (
        live_stack(tmp, env, worker="prom") as running,
        contextlib.ExitStack() as processes,
    ):
        api_target = running.url.removeprefix("http://")
        worker_target = running.metrics_url.removeprefix("http://")
        prom_port = free_port()
        config = {
            # The timeout may not exceed the interval; a loaded machine needs the whole second.
            "global": {
                "scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"
            },
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": API_JOB, "static_configs": [{"targets": [api_target]}]},
                {"job_name": WORKER_JOB, "static_configs": [{"targets": [worker_target]}]},
                {"job_name": OTHER_EXPORTER_JOB, "static_configs": [{"targets": [worker_target]}]},
            ],
        }  # fmt: skip
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        processes.enter_context(
            Service(
                [prometheus_bin, f"--config.file={tmp / 'prometheus.yml'}",
                 f"--storage.tsdb.path={tmp / 'data'}",
                 f"--web.listen-address=127.0.0.1:{prom_port}"],
                {},
                tmp / "prometheus.log",
            )
        )  # fmt: skip
        url = f"http://127.0.0.1:{prom_port}"
        _drive_traffic(running.url)
        wait_until(lambda: http_ok(f"{url}/-/ready"), 60, "prometheus")
        wait_until(
            lambda: (
                _has_series(url, "celery_task_failed_total")
                and _has_series(url, "rate(celery_task_succeeded_total[30s])")
                and _has_series(url, "courier:task_failure_ratio:rate10m")
                and _has_series(url, "rate(courier_http_requests_total[30s])")
                and _has_series(url, "rate(courier_http_request_duration_seconds_bucket[30s])")
            ),
            90,
            "scraped task metrics",
        )
        yield url


def _drive_traffic(api: str) -> None:
    """Successes, a failure, a retry, bad input: every panel then has something to show."""
    submissions = [("noop", {"sleep_seconds": 0.05})] * 10 + [
        ("process_image", {"image_id": "0" * 32, "width": 1, "height": 1}),
        ("send_email", {"to": "flaky-prom@example.com", "subject": "s"}),
    ]
    ids = [
        httpx.post(f"{api}/v1/tasks/{name}", json=body).json()["id"] for name, body in submissions
    ]
    httpx.post(f"{api}/v1/tasks/noop", json={"sleep_seconds": -1})
    httpx.post(f"{api}/v1/tasks/noop", params={"countdown": 30}, json={})

    def finished(task_id: str) -> bool:
        return httpx.get(f"{api}/v1/tasks/{task_id}").json()["status"] in ("succeeded", "failed")

    for task_id in ids:
        wait_until(partial(finished, task_id), 30, f"task {task_id}")


def _query(url: str, expr: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(
        f"{url}/api/v1/query", params={"query": expr}, timeout=10
    ).json()
    return body


def _has_series(url: str, expr: str) -> bool:
    body = _query(url, expr)
    return body.get("status") == "success" and bool(body["data"]["result"])


def test_every_dashboard_query_finds_series(prometheus: str) -> None:
    empty, invalid = [], []
    for name, expr in dashboard_queries():
        body = _query(prometheus, expr)
        if body.get("status") != "success":
            invalid.append((name, body.get("error")))
        elif not body["data"]["result"]:
            empty.append(name)
    assert not invalid, invalid
    assert not empty, empty


def test_every_rule_expression_is_valid_and_every_signal_has_series(prometheus: str) -> None:
    for rule in rules():
        body = _query(prometheus, rule["expr"])
        assert body.get("status") == "success", (rule, body.get("error"))
        if "record" in rule:
            # Signals must have data; an alert's comparison is rightly empty while all is well.
            assert body["data"]["result"], f"recording rule {rule['record']} finds no series"
    loaded = httpx.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
    assert {r["name"] for g in loaded for r in g["rules"]} == {
        rule.get("alert") or rule["record"] for rule in rules()
    }
    assert all(r["health"] == "ok" for g in loaded for r in g["rules"])


def test_dashboards_and_rules_count_courier_once_beside_another_exporter(prometheus: str) -> None:
    """The same worker is scraped twice (its own job and another exporter's): Courier's
    queries and signals see it once, where unscoped queries doubled every figure."""

    def value(expr: str) -> float:
        result = _query(prometheus, expr)["data"]["result"]
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])

    assert value("sum(celery_worker_up)") == 2  # what an unscoped query sees
    workers = next(q for name, q in dashboard_queries() if "sum(celery_worker_up" in q)
    assert value(workers) == 1
    wait_until(lambda: _has_series(prometheus, "courier:workers_up:sum"), 30, "the signal")
    assert value("courier:workers_up:sum") == 1


def test_celery_mixin_selector_finds_the_workers_series(prometheus: str) -> None:
    """celery-mixin's alerts (CeleryTaskHighFailRate, CeleryHighQueueLength, CeleryWorkerDown)
    select job=~".*celery.*" on these metrics: with the chart's job names they find Courier's."""
    for metric in (
        "celery_task_failed_total", "celery_task_succeeded_total", "celery_queue_length",
        "celery_worker_up",
    ):  # fmt: skip
        result = _query(prometheus, f'{metric}{{job=~".*celery.*"}}')["data"]["result"]
        assert WORKER_JOB in {r["metric"]["job"] for r in result}, metric
    api = _query(prometheus, 'courier_http_requests_total{job=~".*celery.*"}')["data"]["result"]
    assert api == []  # the API is not a Celery worker to the mixin


def test_with_every_worker_down_the_backlog_is_exported_and_its_alert_goes_pending(
    tmp_path: Path,
) -> None:
    """The total outage: no worker at all, tasks queued. The API pods export the backlog (the
    lease is free), so the backlog signal has data and CourierBacklogWithoutWorkers is pending
    in a real Prometheus (firing after its 2 minutes), where before nothing exported the queue
    gauges and no backlog alert could fire."""
    api_port, prom_port = free_port(), free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": API_JOB, "static_configs": [{"targets": [f"127.0.0.1:{api_port}"]}]}
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    with contextlib.ExitStack() as processes:
        redis_server = processes.enter_context(RedisServer(tmp_path / "redis"))
        env = {
            "COURIER_REDIS_URL": redis_server.url,
            "COURIER_API_BIND": f"127.0.0.1:{api_port}",
        }
        processes.enter_context(gunicorn(courier_env(env), tmp_path / "api.log"))
        processes.enter_context(
            Service(
                [tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
                 f"--storage.tsdb.path={tmp_path / 'data'}",
                 f"--web.listen-address=127.0.0.1:{prom_port}"],
                {},
                tmp_path / "prometheus.log",
            )
        )  # fmt: skip
        api_url, url = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{prom_port}"
        wait_until(lambda: http_ok(f"{api_url}/readyz"), 60, "the API")
        for _ in range(5):
            assert httpx.post(f"{api_url}/v1/tasks/noop", json={}).status_code == 202
        wait_until(lambda: http_ok(f"{url}/-/ready"), 60, "prometheus")

        def pending() -> list[dict[str, Any]] | None:
            alerts = httpx.get(f"{url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
            found = [
                a for a in alerts if a["labels"]["alertname"] == "CourierBacklogWithoutWorkers"
            ]
            return found or None

        alerts = wait_until(pending, 60, "the no-worker backlog alert")
        assert alerts[0]["state"] in ("pending", "firing")
        assert alerts[0]["labels"]["queue_name"] == DEFAULT_QUEUE

        def backlog() -> list[float] | None:
            result = _query(url, "courier:queue_backlog:max")["data"]["result"]
            values = [float(r["value"][1]) for r in result]
            return values if values == [5.0] else None

        # A scrape between two submits can start the alert on a smaller backlog (1 of 4 runs
        # read 1.0 here): the signal reaches all five at the next scrapes.
        wait_until(backlog, 30, "the backlog signal to read the 5 waiting tasks")
