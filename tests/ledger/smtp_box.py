"""A real SMTP server (aiosmtpd) for the cost reports' e-mail: what it accepted."""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from tollway.ports import free_port

USERNAME, PASSWORD = "reports", "s3cret"


@dataclass
class Mailbox:
    """The SMTP server's side: what it accepted; `hold` blocks the reply to the first DATA."""

    messages: list[EmailMessage] = field(default_factory=list)
    hold: threading.Event | None = None
    holding: threading.Event = field(default_factory=threading.Event)

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        content = envelope.content if isinstance(envelope.content, bytes) else b""
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        if self.hold is not None and len(self.messages) == 1:
            self.holding.set()
            await asyncio.get_running_loop().run_in_executor(None, self.hold.wait, 60)
        return "250 OK"

    def authenticate(
        self, server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            USERNAME.encode(),
            PASSWORD.encode(),
        )
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 235 or 535


@contextmanager
def smtp_server() -> Iterator[tuple[Mailbox, int]]:
    """No certificate: no STARTTLS offered."""
    box = Mailbox()
    port = free_port()
    controller = Controller(
        box,
        hostname="127.0.0.1",
        port=port,
        authenticator=box.authenticate,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield box, port
    finally:
        if box.hold is not None:
            box.hold.set()
        controller.stop()
