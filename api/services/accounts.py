"""Accounts: sign-up (hash, create, open the balance, grant, issue a token) and log-in.

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

from api.services.errors import EmailTaken, WrongPassword
from api.services.passwords import Passwords
from billing import ledger
from infra.database import records
from infra.settings import Settings

_TAKEN = "An account with this email already exists; log in instead."


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
        token = _new_token()
        async with self.pool.connection() as conn, conn.transaction():
            if new_hash is not None:
                await records.update_password_hash(conn, user.id, new_hash)
            await records.insert_bearer_token(
                conn, token, user.id, timedelta(days=self.settings.bearer_token_days)
            )
        return token


def _new_token() -> str:
    return secrets.token_urlsafe(32)
