"""Email delivery backends, chosen by ``COURIER_EMAIL_BACKEND``: ``console`` or ``smtp``.

Backends translate delivery failures into ``TransientError`` (worth a retry: network trouble, a
4xx reply) or ``PermanentError`` (a 5xx reply: the server refused for good).
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Protocol

from worker.core.errors import PermanentError, TransientError
from worker.core.settings import Settings

logger = logging.getLogger(__name__)


class EmailBackend(Protocol):
    def send(self, message: EmailMessage) -> None: ...


def build_message(sender: str, to: str, subject: str, body: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    message.set_content(body)
    return message


class ConsoleBackend:
    """Logs the message instead of sending it: the default, for development."""

    def send(self, message: EmailMessage) -> None:
        logger.info(
            "email (console backend)",
            extra={
                "to": message["To"],
                "subject": message["Subject"],
                "message_id": message["Message-ID"],
                "body": message.get_content(),
            },
        )


class SmtpBackend:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def _connect(self) -> smtplib.SMTP:
        s = self._settings
        if s.smtp_tls == "ssl":
            return smtplib.SMTP_SSL(
                s.smtp_host,
                s.smtp_port,
                timeout=s.smtp_timeout,
                context=ssl.create_default_context(),
            )
        client = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout)
        if s.smtp_tls == "starttls":
            client.starttls(context=ssl.create_default_context())
        return client

    def send(self, message: EmailMessage) -> None:
        s = self._settings
        try:
            with self._connect() as client:
                if s.smtp_user:
                    password = s.smtp_password.get_secret_value() if s.smtp_password else ""
                    client.login(s.smtp_user, password)
                client.send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            _raise_for_reply(min(codes), f"recipients refused: {exc.recipients}")
        except smtplib.SMTPResponseException as exc:
            _raise_for_reply(exc.smtp_code, f"SMTP {exc.smtp_code}: {exc.smtp_error!r}")
        except (OSError, smtplib.SMTPException) as exc:
            raise TransientError(f"SMTP delivery failed: {type(exc).__name__}: {exc}") from None


def _raise_for_reply(code: int, text: str) -> None:
    if 400 <= code < 500:
        raise TransientError(text)
    raise PermanentError(text)


def email_backend(settings: Settings) -> EmailBackend:
    if settings.email_backend == "smtp":
        return SmtpBackend(settings)
    return ConsoleBackend()


def send_email(settings: Settings, to: str, subject: str, body: str) -> str:
    """Send one message through the configured backend; returns its Message-ID."""
    message = build_message(settings.email_from, to, subject, body)
    email_backend(settings).send(message)
    return str(message["Message-ID"])
