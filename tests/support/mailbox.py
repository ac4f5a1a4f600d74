"""A real SMTP server for the tests (aiosmtpd, in a thread of the test process): the
stack's API sends its verification and reset mails here, and the tests read them as a
person would, then follow the link."""

from __future__ import annotations

import asyncio
import email
import re
import threading
import time
from email import policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

from infra import supervisor

_LINK = re.compile(r"(https?://\S+?)#token=([A-Za-z0-9_\-]+)")


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        with self.lock:
            self.messages.append(message)
        return "250 Message accepted for delivery"


class Mailbox:
    def __init__(self) -> None:
        self._inbox = _Inbox()
        self.port = supervisor.free_port()
        self._controller = Controller(self._inbox, hostname="127.0.0.1", port=self.port)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    def to(self, address: str) -> list[EmailMessage]:
        with self._inbox.lock:
            return [m for m in self._inbox.messages if m["To"] == address]

    async def wait_for(
        self, address: str, subject: str, *, count: int = 1, timeout: float = 20.0
    ) -> EmailMessage:
        """The ``count``-th mail to ``address`` whose subject has ``subject``."""
        deadline = time.monotonic() + timeout
        while True:
            found = [m for m in self.to(address) if subject in str(m["Subject"])]
            if len(found) >= count:
                return found[count - 1]
            assert time.monotonic() < deadline, f"no mail {subject!r} to {address} yet"
            await asyncio.sleep(0.05)


def link_of(message: EmailMessage) -> tuple[str, str]:
    """(the link's page URL, its token) of a mail."""
    body = message.get_body(("plain",))
    assert body is not None
    found = _LINK.search(body.get_content())
    assert found is not None, "no link in the mail"
    return found.group(1), found.group(2)
