"""Accounts: sign-up (hash, create, open the balance, grant, issue a token, mail the
verification link), log-in (a bearer token for API clients, or a browser session),
log-out, password change, which ends every other session and token, email verification
and password reset by email, device tokens and the pairing codes that make one for the
Chrome extension. Deletion is in api/services/deletion.py.

Free sign-up tokens: granted at sign-up in local mode; in production only once the email
is verified (at most once: ``ledger.signup_grant_key``). Emailed links carry a random
token, stored as its SHA-256, used once, expiring (``email_verification_hours``,
``password_reset_minutes``); the link puts it after ``#`` so it never reaches a server's
logs. Mail is sent in the background (infra/mail.py): a slow or failing mail server
delays no answer, and a password reset answers the same whether the account exists.

Pairing codes are the extension's fallback when the web app cannot message it: the
account page shows a code, the person types it in the extension's popup, and the
extension redeems it for a device token of its own. A code is 8 characters of an
alphabet with no look-alikes (no 0/O, 1/I/L), is typed back in any case, with or without
its dash or spaces, lives ``PAIRING_CODE_TTL``, works once and is stored as its SHA-256.
31^8 is about 10^12 codes, and redeem attempts are rate limited per address
(api/limits.py), so guessing a live one is hopeless.

Password hashing holds no database connection: each call hashes or verifies first
(bounded by ``Passwords``), then checks a connection out only for its short writes.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg_pool import AsyncConnectionPool

from api.services import text
from api.services.errors import EmailTaken, InvalidInput, InvalidToken, NotFound, WrongPassword
from api.services.passwords import Passwords
from billing import ledger
from infra.database import pairing, records
from infra.mail import Letter, Mailer, MailFailed
from infra.settings import Settings

log = logging.getLogger("bitbuddies.accounts")

_TAKEN = "An account with this email already exists; log in instead."
_BAD_LINK = "This link is unknown, expired or was used already; ask for a new one."
_BAD_CODE = (
    "This code is unknown, expired or was used already; make a new one on your account page."
)

# Pairing codes: no 0, O, 1, I or L, which read alike; 8 characters, shown as two fours.
PAIRING_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
PAIRING_CODE_LENGTH = 8
PAIRING_CODE_TTL = timedelta(minutes=10)


@dataclass(frozen=True)
class OpenedSession:
    user: records.User
    session_id: str  # goes in the HttpOnly cookie, nowhere else
    csrf_token: str  # the pages send it back on every state-changing request


@dataclass(frozen=True)
class SignedUp:
    user_id: uuid.UUID
    email: str
    token: str


@dataclass(frozen=True)
class PairingCode:
    code: str  # as shown: ABCD-EFGH
    expires_at: datetime


@dataclass(frozen=True)
class Verified:
    granted: int  # tokens this verification granted (0: none, or granted before)


class AccountService:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        settings: Settings,
        passwords: Passwords,
        mailer: Mailer | None = None,
    ) -> None:
        """``mailer`` defaults to the settings' (refused in production without SMTP, so
        the API does not start without a way to send its links)."""
        self.pool = pool
        self.settings = settings
        self.passwords = passwords
        self.mailer = mailer or Mailer.from_settings(settings)
        self._sending: set[asyncio.Task[None]] = set()

    async def sign_up(self, email: str, password: str) -> SignedUp:
        """A new account with its bearer token. ``email`` is normalised and ``password``
        checked already (api/services/text.py, applied by the request schema)."""
        settings = self.settings
        async with self.pool.connection() as conn:
            taken = await records.user_by_email(conn, email) is not None
        if taken:  # checked first so a taken address costs no hashing
            raise EmailTaken(_TAKEN)
        password_hash = await self.passwords.hash(password)
        user_id = uuid.uuid4()
        token = _new_token()
        link_token = _new_token()
        async with self.pool.connection() as conn, conn.transaction():
            if not await records.insert_user(conn, user_id, email, password_hash):
                raise EmailTaken(_TAKEN)
            await ledger.open_account(conn, user_id)
            # In production the free tokens wait for the verified email (verify_email).
            if settings.environment == "local" and settings.signup_tokens > 0:
                await ledger.grant(
                    conn,
                    user_id,
                    settings.signup_tokens,
                    idempotency_key=ledger.signup_grant_key(user_id),
                    reason="free tokens for a new local account",
                )
            await records.insert_bearer_token(
                conn, token, user_id, timedelta(days=settings.bearer_token_days)
            )
            await self._new_verification(conn, user_id, link_token)
        self._send_later(self._verification_letter(email, link_token))
        return SignedUp(user_id=user_id, email=email, token=token)

    async def resend_verification(self, user: records.User) -> None:
        """A new verification link, unless the email is verified already (then nothing
        is sent)."""
        link_token = _new_token()
        async with self.pool.connection() as conn:
            if await records.email_verified(conn, user.id):
                return
            await self._new_verification(conn, user.id, link_token)
        self._send_later(self._verification_letter(user.email, link_token))

    async def verify_email(self, token: str) -> Verified:
        """Mark the link's account verified; in production grant its free tokens, once.
        InvalidToken when the link is unknown, expired or used."""
        settings = self.settings
        async with self.pool.connection() as conn, conn.transaction():
            user_id = await records.use_email_token(conn, token, "verify_email")
            if user_id is None:
                raise InvalidToken(_BAD_LINK)
            await records.mark_email_verified(conn, user_id)
            granted = 0
            if settings.environment == "production" and settings.signup_tokens > 0:
                made = await ledger.grant_once(
                    conn,
                    user_id,
                    settings.signup_tokens,
                    idempotency_key=ledger.signup_grant_key(user_id),
                    reason="free tokens for a verified account",
                )
                granted = settings.signup_tokens if made else 0
        return Verified(granted=granted)

    async def request_password_reset(self, email: str) -> None:
        """Mail a reset link if an account has this (normalised) email; the caller
        answers the same either way, and the mail goes in the background."""
        link_token = _new_token()
        async with self.pool.connection() as conn:
            user = await records.user_by_email(conn, email)
            if user is not None:
                await records.insert_email_token(
                    conn,
                    link_token,
                    user.id,
                    "reset_password",
                    timedelta(minutes=self.settings.password_reset_minutes),
                )
        if user is not None:
            link = self._link("reset-password", link_token)
            minutes = round(self.settings.password_reset_minutes)
            self._send_later(
                Letter(
                    to=user.email,
                    subject="Reset your BitBuddies password",
                    body=(
                        "Someone asked to reset the password of your BitBuddies account."
                        f" To choose a new one, open this link:\n\n{link}\n\nIt works"
                        f" once, for {minutes} minutes. If it was not you, ignore this"
                        " mail: your password stays as it is.\n"
                    ),
                    link=link,
                    purpose="password reset",
                )
            )

    async def reset_password(self, token: str, new: str) -> None:
        """Set a new password from a reset link, and end every session and bearer token
        of the account. InvalidToken for a bad link, InvalidInput for a weak password
        (the link stays usable then)."""
        async with self.pool.connection() as conn:
            user = await records.email_token_user(conn, token, "reset_password")
        if user is None:
            raise InvalidToken(_BAD_LINK)
        password_hash = await self._new_password_hash(user, new)
        async with self.pool.connection() as conn, conn.transaction():
            if await records.use_email_token(conn, token, "reset_password") != user.id:
                raise InvalidToken(_BAD_LINK)  # used meanwhile: nothing changes
            await records.update_password_hash(conn, user.id, password_hash)
            await records.end_sessions(conn, user.id)
            await records.end_bearer_tokens(conn, user.id)
        log.info("password reset by email", extra={"user_id": user.id})

    async def _new_verification(self, conn: records.Conn, user_id: uuid.UUID, token: str) -> None:
        await records.insert_email_token(
            conn,
            token,
            user_id,
            "verify_email",
            timedelta(hours=self.settings.email_verification_hours),
        )

    def _verification_letter(self, email: str, token: str) -> Letter:
        link = self._link("verify-email", token)
        hours = round(self.settings.email_verification_hours)
        return Letter(
            to=email,
            subject="Confirm your email for BitBuddies",
            body=(
                f"Welcome to BitBuddies! To confirm your email address, open this link:\n\n"
                f"{link}\n\nIt works once, for {hours} hours. If you did not sign up,"
                " ignore this mail.\n"
            ),
            link=link,
            purpose="email verification",
        )

    def _link(self, page: str, token: str) -> str:
        # After '#': browsers never send the fragment, so the token stays out of logs.
        return f"{self.settings.public_url.rstrip('/')}/{page}#token={token}"

    def _send_later(self, letter: Letter) -> None:
        """Send in the background; a failure is logged (without the link)."""
        task = asyncio.create_task(self._send(letter))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, letter: Letter) -> None:
        try:
            await self.mailer.send(letter)
        except MailFailed as err:
            log.error("%s", err)
        except Exception as err:  # never the letter itself in the log: it holds the token
            log.error("%s mail not sent: %s", letter.purpose, type(err).__name__)

    async def log_in(
        self,
        email: str,
        password: str,
        *,
        record_result: Callable[[bool], Awaitable[None]] | None = None,
    ) -> str:
        """A new bearer token. ``record_result`` hears whether the password was right,
        before anything else happens (the place for failed-login backoff)."""
        user = await self._verified(email, password, record_result)
        token = _new_token()
        async with self.pool.connection() as conn:
            await records.insert_bearer_token(
                conn, token, user.id, timedelta(days=self.settings.bearer_token_days)
            )
        return token

    async def open_session(
        self,
        email: str,
        password: str,
        *,
        record_result: Callable[[bool], Awaitable[None]] | None = None,
    ) -> OpenedSession:
        """A new browser session (a new id every time: a session id planted before the
        log-in is never the one that gets signed in) and its CSRF token."""
        user = await self._verified(email, password, record_result)
        opened = OpenedSession(user=user, session_id=_new_token(), csrf_token=_new_token())
        async with self.pool.connection() as conn:
            await records.insert_session(
                conn,
                opened.session_id,
                user.id,
                opened.csrf_token,
                timedelta(days=self.settings.session_days),
            )
        return opened

    async def create_device_token(
        self, user: records.User, name: str
    ) -> tuple[str, records.DeviceToken]:
        """A new named device token; the token itself is shown this once, only its
        SHA-256 is kept."""
        token = _new_token()
        async with self.pool.connection() as conn:
            made = await self._insert_device_token(conn, token, user.id, name)
        return token, made

    async def _insert_device_token(
        self, conn: records.Conn, token: str, user_id: uuid.UUID, name: str
    ) -> records.DeviceToken:
        return await records.insert_bearer_token(
            conn,
            token,
            user_id,
            timedelta(days=self.settings.device_token_days),
            name=name,
            device=True,
        )

    async def create_pairing_code(self, user: records.User) -> PairingCode:
        """A new pairing code of ``user``, for ``pair``; another is drawn in the rare case
        a live code is the same."""
        async with self.pool.connection() as conn:
            while True:
                code = "".join(secrets.choice(PAIRING_ALPHABET) for _ in range(PAIRING_CODE_LENGTH))
                expires_at = await pairing.insert_code(conn, code, user.id, PAIRING_CODE_TTL)
                if expires_at is not None:
                    return PairingCode(code=f"{code[:4]}-{code[4:]}", expires_at=expires_at)

    async def pair(self, code: str, name: str) -> tuple[str, records.DeviceToken]:
        """Redeem a pairing code for a new device token of its user, using the code up in
        the same transaction (of two concurrent redeems, one gets the token).
        InvalidToken when the code is unknown, expired or used (the three look alike)."""
        typed = "".join(code.split()).replace("-", "").upper()
        if len(typed) != PAIRING_CODE_LENGTH or not set(typed) <= set(PAIRING_ALPHABET):
            raise InvalidToken(_BAD_CODE)
        token = _new_token()
        async with self.pool.connection() as conn, conn.transaction():
            user_id = await pairing.use_code(conn, typed)
            if user_id is None:
                raise InvalidToken(_BAD_CODE)
            made = await self._insert_device_token(conn, token, user_id, name)
        return token, made

    async def device_tokens(self, user: records.User) -> list[records.DeviceToken]:
        async with self.pool.connection() as conn:
            return await records.device_tokens(conn, user.id)

    async def revoke_device_token(self, user: records.User, token_id: uuid.UUID) -> None:
        async with self.pool.connection() as conn:
            if not await records.revoke_device_token(conn, user.id, token_id):
                raise NotFound("No such device token.")

    async def close_session(self, session_id: str) -> None:
        async with self.pool.connection() as conn:
            await records.end_session(conn, session_id)

    async def end_token(self, token: str) -> None:
        async with self.pool.connection() as conn:
            await records.end_bearer_token(conn, token)

    async def _new_password_hash(self, user: records.User, new: str) -> str:
        """The hash of a new password, once it passes the sign-up rules (InvalidInput)."""
        try:
            text.check_new_password(new, email=user.email)
        except text.TextRefused as err:
            raise InvalidInput(str(err)) from err
        return await self.passwords.hash(new)

    async def change_password(
        self,
        user: records.User,
        current: str,
        new: str,
        *,
        keep_token: str | None = None,
        keep_session: str | None = None,
    ) -> None:
        """Change the password and end every other way in: each browser session and
        bearer token of the user but the one this change came with."""
        if not await self.passwords.verify(user.password_hash, current):
            raise WrongPassword("The current password is wrong.")
        password_hash = await self._new_password_hash(user, new)
        async with self.pool.connection() as conn, conn.transaction():
            await records.update_password_hash(conn, user.id, password_hash)
            await records.end_sessions(conn, user.id, keep=keep_session)
            await records.end_bearer_tokens(conn, user.id, keep=keep_token)

    async def _verified(
        self,
        email: str,
        password: str,
        record_result: Callable[[bool], Awaitable[None]] | None,
    ) -> records.User:
        async with self.pool.connection() as conn:
            user = await records.user_by_email(conn, email)
        ok = await self.passwords.verify(user.password_hash if user else None, password)
        new_hash = (
            await self.passwords.hash(password)
            if ok and user and self.passwords.needs_rehash(user.password_hash)
            else None
        )
        if record_result is not None:
            await record_result(ok)
        if not ok or user is None:
            raise WrongPassword("Wrong email or password.")
        if new_hash is not None:
            async with self.pool.connection() as conn:
                await records.update_password_hash(conn, user.id, new_hash)
        return user


def _new_token() -> str:
    return secrets.token_urlsafe(32)
