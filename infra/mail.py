"""Outgoing mail: the email verification and password reset links.

Sent with the standard library's ``smtplib`` in a worker thread (``asyncio.to_thread``),
so a slow mail server never holds the event loop. ``BITBUDDIES_SMTP_URL`` names the
server: ``smtp://[user:password@]host[:port]`` (STARTTLS when the server offers it;
port 25 by default) or ``smtps://...`` (TLS from the start; port 465).

Without it (local mode) nothing is sent: the link is logged at WARNING instead, so a
developer can click it. The link holds a secret token, which is acceptable only there;
a production API refuses to start without a mail server (``MailNotConfigured``, raised
when the ``Mailer`` is made, in the API's start-up). With a server configured, neither
the link nor its token is ever logged.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from urllib.parse import unquote, urlsplit

from infra.settings import Settings

log = logging.getLogger("bitbuddies.mail")

SMTP_TIMEOUT_SECONDS = 15.0


class MailNotConfigured(RuntimeError):
    """Production without ``BITBUDDIES_SMTP_URL``: the links could reach nobody."""


class MailFailed(RuntimeError):
    """The mail server refused the message or could not be reached."""


@dataclass(frozen=True)
class SmtpServer:
    host: str
    port: int
    tls: bool  # smtps: TLS from the first byte; else STARTTLS when offered
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_url(cls, url: str) -> SmtpServer:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError("BITBUDDIES_SMTP_URL must look like smtp://host:port or smtps://...")
        tls = parts.scheme == "smtps"
        return cls(
            host=parts.hostname,
            port=parts.port or (465 if tls else 25),
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )


@dataclass(frozen=True)
class Letter:
    to: str
    subject: str
    body: str  # plain text; holds the link
    link: str  # the link in it, logged only when no server is configured
    purpose: str  # what it is for, in logs ("email verification", "password reset")


class Mailer:
    def __init__(self, server: SmtpServer | None, sender: str) -> None:
        self.server = server
        self.sender = sender

    @classmethod
    def from_settings(cls, settings: Settings) -> Mailer:
        url = settings.smtp_url.get_secret_value().strip() if settings.smtp_url else ""
        if not url and settings.environment == "production":
            raise MailNotConfigured(
                "BITBUDDIES_SMTP_URL must be set in production: sign-up and password reset"
                " send links by email"
            )
        return cls(SmtpServer.from_url(url) if url else None, settings.mail_from)

    async def send(self, letter: Letter) -> None:
        """Send it, or without a server log its link; MailFailed when the server fails."""
        if self.server is None:
            log.warning("no SMTP configured: the %s link is %s", letter.purpose, letter.link)
            return
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = letter.to
        message["Subject"] = letter.subject
        message["Message-ID"] = make_msgid(domain=self.server.host)
        message.set_content(letter.body)
        try:
            await asyncio.to_thread(_deliver, self.server, message)
        except (OSError, smtplib.SMTPException) as err:
            # The error names the server's answer, never the message (it holds the token).
            raise MailFailed(f"{letter.purpose} mail not sent: {type(err).__name__}") from None


def _deliver(server: SmtpServer, message: EmailMessage) -> None:
    context = ssl.create_default_context()
    smtp: smtplib.SMTP
    if server.tls:
        smtp = smtplib.SMTP_SSL(
            server.host, server.port, timeout=SMTP_TIMEOUT_SECONDS, context=context
        )
    else:
        smtp = smtplib.SMTP(server.host, server.port, timeout=SMTP_TIMEOUT_SECONDS)
    with smtp:
        smtp.ehlo()
        if not server.tls and smtp.has_extn("starttls"):
            smtp.starttls(context=context)
            smtp.ehlo()
        if server.username:
            smtp.login(server.username, server.password or "")
        smtp.send_message(message)
