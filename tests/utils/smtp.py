"""A real SMTP server on loopback (aiosmtpd) whose replies depend on the recipient.

``flaky-*@...`` is refused with 451 on the first attempt and accepted afterwards,
``busy-*@...`` always gets 451 (temporary), ``reject-*@...`` always gets 550 (permanent).
"""

from __future__ import annotations

import email
import threading
from collections import Counter
from email.message import Message
from typing import Any

from aiosmtpd.controller import Controller

from tests.utils.processes import free_port, wait_until


class RecordingHandler:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.attempts: Counter[str] = Counter()
        self._lock = threading.Lock()

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        local = address.split("@", 1)[0]
        with self._lock:
            self.attempts[address] += 1
            attempt = self.attempts[address]
        if local.startswith("busy") or (local.startswith("flaky") and attempt == 1):
            return "451 4.3.0 Temporary failure, try again later"
        if local.startswith("reject"):
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content)
        with self._lock:
            self.messages.append(message)
        return "250 Message accepted for delivery"

    def delivered_to(self, address: str) -> list[Message]:
        with self._lock:
            return [m for m in self.messages if m["To"] == address]

    def wait_for(self, address: str, timeout: float = 15) -> Message:
        return wait_until(
            lambda: next(iter(self.delivered_to(address)), None), timeout, f"an email to {address}"
        )


class SmtpServer:
    def __init__(self) -> None:
        self.handler = RecordingHandler()
        self.port = free_port()
        self._controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()
