"""Accounts: sign-up (hash, create, open the balance, grant, issue a token), log-in (a
bearer token for API clients, or a browser session), log-out, and password change, which
ends every other session and token.

Password hashing holds no database connection: each call hashes or verifies first
(bounded by ``Passwords``), then checks a connection out only for its short writes.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from psycopg_pool import AsyncConnectionPool

from api.services import text
from api.services.errors import EmailTaken, InvalidInput, NotFound, WrongPassword
from api.services.passwords import Passwords
from billing import ledger
from infra.database import records
from infra.settings import Settings

_TAKEN = "An account with this email already exists; log in instead."


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


class AccountService:
    def __init__(
        self, pool: AsyncConnectionPool[Any], settings: Settings, passwords: Passwords
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.passwords = passwords

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
        async with self.pool.connection() as conn, conn.transaction():
            if not await records.insert_user(conn, user_id, email, password_hash):
                raise EmailTaken(_TAKEN)
            await ledger.open_account(conn, user_id)
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
        return SignedUp(user_id=user_id, email=email, token=token)

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
            made = await records.insert_bearer_token(
                conn,
                token,
                user.id,
                timedelta(days=self.settings.device_token_days),
                name=name,
                device=True,
            )
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
        try:
            text.check_new_password(new, email=user.email)
        except text.TextRefused as err:
            raise InvalidInput(str(err)) from err
        password_hash = await self.passwords.hash(new)
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
