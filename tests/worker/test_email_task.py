"""send_email against a real SMTP server: delivery, retry with backoff, retries exhausted."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient

from tests.conftest import wait_for_status
from tests.utils.smtp import SmtpServer


def test_email_is_delivered_through_smtp(
    live_api: TestClient,
    submit: Callable[..., str],
    smtp_server: SmtpServer,
    unique: Callable[[str], str],
) -> None:
    address = f"{unique('frank')}@example.com"
    task_id = submit("send_email", {"to": address, "subject": "Report", "body": "Ready."})
    done = wait_for_status(live_api, task_id)
    assert done["status"] == "succeeded"
    assert done["result"]["backend"] == "smtp"
    message = smtp_server.handler.wait_for(address)
    assert message["Message-ID"] == done["result"]["message_id"]
    payload = message.get_payload()
    assert isinstance(payload, str) and payload.strip() == "Ready."


def test_temporary_failure_is_retried_and_succeeds_on_the_second_try(
    live_api: TestClient,
    submit: Callable[..., str],
    smtp_server: SmtpServer,
    unique: Callable[[str], str],
) -> None:
    address = f"{unique('flaky')}@example.com"
    task_id = submit("send_email", {"to": address, "subject": "Again", "body": "x"})
    done = wait_for_status(live_api, task_id)
    assert done["status"] == "succeeded"
    assert done["retries"] == 1
    assert smtp_server.handler.attempts[address] == 2
    assert len(smtp_server.handler.delivered_to(address)) == 1


def test_persistent_temporary_failure_exhausts_three_retries_then_fails(
    live_api: TestClient,
    submit: Callable[..., str],
    smtp_server: SmtpServer,
    unique: Callable[[str], str],
) -> None:
    address = f"{unique('busy')}@example.com"
    task_id = submit("send_email", {"to": address, "subject": "Never", "body": "x"})
    done = wait_for_status(live_api, task_id, timeout=30)
    assert done["status"] == "failed"
    assert done["error"]["type"] == "TransientError"
    assert "451" in done["error"]["message"]
    assert done["retries"] == 3
    assert smtp_server.handler.attempts[address] == 4


def test_permanent_refusal_fails_at_once_without_retry(
    live_api: TestClient,
    submit: Callable[..., str],
    smtp_server: SmtpServer,
    unique: Callable[[str], str],
) -> None:
    address = f"{unique('reject')}@example.com"
    task_id = submit("send_email", {"to": address, "subject": "No", "body": "x"})
    done = wait_for_status(live_api, task_id)
    assert done["status"] == "failed"
    assert done["error"]["type"] == "PermanentError"
    assert "550" in done["error"]["message"]
    assert smtp_server.handler.attempts[address] == 1


def test_retrying_status_is_visible_between_attempts(
    live_api: TestClient, submit: Callable[..., str], unique: Callable[[str], str]
) -> None:
    task_id = submit("send_email", {"to": f"{unique('busy')}@example.com", "subject": "s"})
    retrying = wait_for_status(live_api, task_id, {"retrying"}, timeout=10)
    assert retrying["error"]["type"] == "TransientError"
    wait_for_status(live_api, task_id, timeout=30)
