"""Settings: defaults, parsing, and start-up failures that name the variable."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from celery import Celery
from celery.concurrency import get_implementation
from celery.concurrency.prefork import TaskPool as PreforkPool

from tests.utils.processes import ROOT, courier_env
from worker.celery_config import create_celery_app
from worker.core.names import DEFAULT_QUEUE
from worker.core.settings import Settings, SettingsError, load_settings
from worker.pool import TaskPool

SETTINGS_PAGE = ROOT / "docs" / "settings.md"


def documented_defaults() -> dict[str, str]:
    """Variable -> default cell of the Settings table on the docs' settings page."""
    rows = re.findall(
        r"^\| `(COURIER_[A-Z0-9_]+)` \| [^\n]*? \| (unset|empty|`[^`]*`) \| ",
        SETTINGS_PAGE.read_text(),
        re.M,
    )
    return {name: default.strip("`") for name, default in rows}


def test_defaults_match_the_documentation(monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented defaults, set explicitly, give the settings that no variable at all gives."""
    for name in list(os.environ):
        if name.startswith("COURIER_"):
            monkeypatch.delenv(name)
    defaults = load_settings()
    documented = documented_defaults()
    assert sorted(documented) == sorted(
        f"COURIER_{field.upper()}" for field in Settings.model_fields
    )
    for name, value in documented.items():
        field = name.removeprefix("COURIER_").lower()
        if value == "unset":
            assert getattr(defaults, field) is None, name
        elif value == "empty":
            assert not getattr(defaults, field), name
        else:
            monkeypatch.setenv(name, value)
    assert load_settings() == defaults
    assert documented["COURIER_REDIS_URL"] == "redis://localhost:6379/0"
    assert documented["COURIER_QUEUES"] == DEFAULT_QUEUE


def test_the_default_queue_is_celerys_own_so_stock_producers_reach_the_workers() -> None:
    stock = Celery("stock")
    assert DEFAULT_QUEUE == stock.conf.task_default_queue == "celery"
    stock.close()


def test_queues_are_read_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COURIER_QUEUES", "high, default ,low")
    settings = load_settings()
    assert settings.queues == ["high", "default", "low"]
    assert settings.default_queue == "high"


def test_celerys_default_queue_exchange_and_routing_key_follow_the_first_queue() -> None:
    """What a Courier process publishes with no queue goes where Courier's default is."""
    for queues in ([DEFAULT_QUEUE], ["high", "low"]):
        app = create_celery_app(Settings(queues=queues))
        assert app.conf.task_default_queue == queues[0]
        assert app.conf.task_default_exchange == app.conf.task_default_routing_key == queues[0]
        assert [queue.name for queue in app.conf.task_queues] == queues
        app.close()


def test_the_worker_pool_setting_selects_celerys_pool() -> None:
    """Through Celery's ``worker_pool``: ``celery worker --pool`` takes only Celery's own names."""
    for pool, expected in (("prefork", PreforkPool), ("inline", TaskPool)):
        app = create_celery_app(Settings(worker_pool=pool))
        assert get_implementation(app.conf.worker_pool) is expected
        app.close()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("COURIER_REDIS_URL", "http://nope"),
        ("COURIER_RESULT_EXPIRES", "-5"),
        ("COURIER_EMAIL_BACKEND", "pigeon"),
        ("COURIER_BROKER_VISIBILITY_TIMEOUT", "soon"),
        ("COURIER_WORKER_POOL", "threads"),
    ],
)
def test_an_invalid_variable_is_named_in_the_error(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable):
        load_settings()


def start_with(program: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``program`` in a fresh interpreter with only ``env`` as Courier's settings."""
    return subprocess.run(
        [sys.executable, "-c", program],
        env=courier_env(env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "program",
    ["import worker.celery_app", "from app.main import create_app; create_app()"],
)
def test_worker_and_api_refuse_to_start_with_invalid_settings(program: str) -> None:
    result = start_with(program, {"COURIER_SMTP_PORT": "99999"})
    assert result.returncode == 1
    assert "COURIER_SMTP_PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_settings_are_immutable() -> None:
    with pytest.raises(ValueError, match="frozen"):
        Settings().redis_url = "redis://elsewhere"  # type: ignore[misc]


def test_time_limits_for_an_unknown_task_stop_the_worker() -> None:
    result = start_with(
        "import worker.celery_app", {"COURIER_TASK_TIME_LIMITS": '{"nope": {"hard": 1}}'}
    )
    assert result.returncode == 1
    assert "COURIER_TASK_TIME_LIMITS" in result.stderr and "nope" in result.stderr


def test_per_task_limits_override_the_global_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COURIER_TASK_TIME_LIMIT", "100")
    monkeypatch.setenv("COURIER_TASK_TIME_LIMITS", '{"process_image": {"soft": 50, "hard": 60}}')
    settings = load_settings()
    assert settings.time_limits_for("process_image").model_dump() == {"soft": 50, "hard": 60}
    assert settings.time_limits_for("noop").model_dump() == {"soft": None, "hard": 100}


def test_sentinels_are_read_as_a_comma_separated_host_port_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COURIER_REDIS_SENTINELS", "s1:26380, [::1]:26381,s3")
    monkeypatch.setenv("COURIER_REDIS_SENTINEL_MASTER", "courier")
    monkeypatch.setenv("COURIER_REDIS_SENTINEL_PASSWORD", "sentinel-secret")
    settings = load_settings()
    assert [str(address) for address in settings.redis_sentinels] == [
        "s1:26380", "[::1]:26381", "s3:26379",
    ]  # fmt: skip
    assert settings.uses_sentinel and settings.redis_sentinel_master == "courier"
    assert settings.redis_sentinel_password is not None
    assert settings.redis_sentinel_password.get_secret_value() == "sentinel-secret"


def test_without_sentinel_settings_nothing_uses_sentinel(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("COURIER_REDIS_SENTINELS", "COURIER_REDIS_SENTINEL_MASTER"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert not settings.uses_sentinel and settings.redis_sentinels == []


@pytest.mark.parametrize(
    ("sentinels", "complaint"),
    [
        ("s1:port", "not a number"),
        ("s1:70000", "not a number from 1 to 65535"),
        (":26379", "no host"),
        ("s1,,s2", "empty entry"),
        ("fe80::1:26379", "IPv6"),
    ],
)
def test_a_bad_sentinel_address_is_named_in_the_error(
    monkeypatch: pytest.MonkeyPatch, sentinels: str, complaint: str
) -> None:
    monkeypatch.setenv("COURIER_REDIS_SENTINELS", sentinels)
    monkeypatch.setenv("COURIER_REDIS_SENTINEL_MASTER", "courier")
    with pytest.raises(SettingsError, match="COURIER_REDIS_SENTINELS") as error:
        load_settings()
    assert complaint in str(error.value)


@pytest.mark.parametrize(
    ("variables", "missing"),
    [
        ({"COURIER_REDIS_SENTINELS": "s1:26379"}, "COURIER_REDIS_SENTINEL_MASTER is not"),
        ({"COURIER_REDIS_SENTINEL_MASTER": "courier"}, "COURIER_REDIS_SENTINELS is not"),
    ],
)
def test_sentinels_and_master_name_come_together(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], missing: str
) -> None:
    for name in ("COURIER_REDIS_SENTINELS", "COURIER_REDIS_SENTINEL_MASTER"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=missing) as error:
        load_settings()
    assert "COURIER_:" not in str(error.value)
