"""Sign-up, log-in and the caller's own account."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import APIRouter, status

from api.deps import ConnDep, CurrentUser, SettingsDep
from api.errors import Conflict, Unauthorized
from api.schemas import LoginCreate, LoginPublic, MePublic, SignupCreate, SignupPublic, UserPublic
from billing import ledger
from infra.database import records

router = APIRouter(prefix="/v1", tags=["accounts"])
_hasher = PasswordHasher()
# Verified against when the email is unknown, so both failures take the same time.
_DUMMY_HASH = _hasher.hash("not-a-real-password")


def _new_token() -> str:
    return secrets.token_urlsafe(32)


@router.post("/auth/signup", status_code=status.HTTP_201_CREATED, response_model=SignupPublic)
async def signup(body: SignupCreate, conn: ConnDep, settings: SettingsDep) -> SignupPublic:
    password_hash = await asyncio.to_thread(_hasher.hash, body.password)
    user_id = uuid.uuid4()
    token = _new_token()
    async with conn.transaction():
        if not await records.insert_user(conn, user_id, body.email.strip(), password_hash):
            raise Conflict("An account with this email already exists; log in instead.")
        await ledger.open_account(conn, user_id)
        if settings.environment == "local" and settings.signup_tokens > 0:
            await ledger.grant(
                conn,
                user_id,
                settings.signup_tokens,
                idempotency_key=f"signup:{user_id}",
                reason="free tokens for a new local account",
            )
        await records.insert_session(conn, token, user_id, timedelta(days=settings.session_days))
    return SignupPublic(token=token, user=UserPublic(id=user_id, email=body.email.strip()))


@router.post("/auth/login", response_model=LoginPublic)
async def login(body: LoginCreate, conn: ConnDep, settings: SettingsDep) -> LoginPublic:
    user = await records.user_by_email(conn, body.email.strip())
    try:
        await asyncio.to_thread(
            _hasher.verify, user.password_hash if user else _DUMMY_HASH, body.password
        )
    except (VerificationError, InvalidHashError):
        user = None
    if user is None:
        raise Unauthorized("Wrong email or password.")
    token = _new_token()
    async with conn.transaction():
        if _hasher.check_needs_rehash(user.password_hash):
            new_hash = await asyncio.to_thread(_hasher.hash, body.password)
            await records.update_password_hash(conn, user.id, new_hash)
        await records.insert_session(conn, token, user.id, timedelta(days=settings.session_days))
    return LoginPublic(token=token)


@router.get("/me", response_model=MePublic)
async def me(user: CurrentUser, conn: ConnDep) -> MePublic:
    return MePublic(id=user.id, email=user.email, balance=await ledger.balance(conn, user.id))
