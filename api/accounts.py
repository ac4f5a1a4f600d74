"""Sign-up, log-in and the caller's own account.

Password hashing holds no database connection: each handler hashes or verifies first
(bounded by ``api.passwords.Passwords``), then checks a connection out only for its
short writes.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request, status

from api import limits
from api.deps import ConnDep, CurrentUser, PoolDep, SettingsDep
from api.errors import Conflict, Unauthorized, Unavailable, documented
from api.passwords import HashingBusy, Passwords
from api.schemas import LoginCreate, LoginPublic, MePublic, SignupCreate, SignupPublic, UserPublic
from billing import ledger
from infra.database import records

router = APIRouter(prefix="/v1", tags=["accounts"])


def _passwords(request: Request) -> Passwords:
    passwords: Passwords = request.app.state.passwords
    return passwords


PasswordsDep = Annotated[Passwords, Depends(_passwords)]
_BUSY = "Too many sign-ins at once; try again in a moment."


def _new_token() -> str:
    return secrets.token_urlsafe(32)


@router.post(
    "/auth/signup",
    status_code=status.HTTP_201_CREATED,
    response_model=SignupPublic,
    responses=documented(
        409,
        422,
        429,
        503,
        s409="An account with this email exists",
        s422="Not an email address, or a weak password",
        s503="Too many sign-ins at once; retry",
    ),
    dependencies=[Depends(limits.signup_allowed)],
)
async def signup(
    body: SignupCreate, pool: PoolDep, settings: SettingsDep, passwords: PasswordsDep
) -> SignupPublic:
    async with pool.connection() as conn:
        taken = await records.user_by_email(conn, body.email) is not None
    if taken:  # checked first so a taken address costs no hashing
        raise Conflict("An account with this email already exists; log in instead.")
    try:
        password_hash = await passwords.hash(body.password)
    except HashingBusy as err:
        raise Unavailable(_BUSY, retry_after=1) from err
    user_id = uuid.uuid4()
    token = _new_token()
    async with pool.connection() as conn, conn.transaction():
        if not await records.insert_user(conn, user_id, body.email, password_hash):
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
        await records.insert_bearer_token(
            conn, token, user_id, timedelta(days=settings.bearer_token_days)
        )
    return SignupPublic(token=token, user=UserPublic(id=user_id, email=body.email))


@router.post(
    "/auth/login",
    response_model=LoginPublic,
    responses=documented(
        401,
        422,
        429,
        503,
        s401="Wrong email or password",
        s429="Too many log-ins, or wrong passwords; see Retry-After",
        s503="Too many sign-ins at once; retry",
    ),
)
async def login(
    request: Request,
    body: LoginCreate,
    pool: PoolDep,
    settings: SettingsDep,
    passwords: PasswordsDep,
) -> LoginPublic:
    await limits.login_allowed(request, body.email)
    async with pool.connection() as conn:
        user = await records.user_by_email(conn, body.email)
    try:
        ok = await passwords.verify(user.password_hash if user else None, body.password)
        new_hash = (
            await passwords.hash(body.password)
            if ok and user and passwords.needs_rehash(user.password_hash)
            else None
        )
    except HashingBusy as err:
        raise Unavailable(_BUSY, retry_after=1) from err
    await limits.login_result(request, body.email, ok=ok)
    if not ok or user is None:
        raise Unauthorized("Wrong email or password.")
    token = _new_token()
    async with pool.connection() as conn, conn.transaction():
        if new_hash is not None:
            await records.update_password_hash(conn, user.id, new_hash)
        await records.insert_bearer_token(
            conn, token, user.id, timedelta(days=settings.bearer_token_days)
        )
    return LoginPublic(token=token)


@router.get("/me", response_model=MePublic, responses=documented(401))
async def me(user: CurrentUser, conn: ConnDep) -> MePublic:
    return MePublic(id=user.id, email=user.email, balance=await ledger.balance(conn, user.id))
