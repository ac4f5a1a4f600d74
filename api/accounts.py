"""The account routes: sign-up, log-in and the caller's own account. HTTP in, a call to
AccountService (api/services/accounts.py), HTTP out."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, status

from api import limits
from api.deps import AccountsDep, ConnDep, CurrentUser
from api.errors import documented
from api.schemas import LoginCreate, LoginPublic, MePublic, SignupCreate, SignupPublic, UserPublic
from billing import ledger

router = APIRouter(prefix="/v1", tags=["accounts"])


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
async def signup(body: SignupCreate, accounts: AccountsDep) -> SignupPublic:
    made = await accounts.sign_up(body.email, body.password)
    return SignupPublic(token=made.token, user=UserPublic(id=made.user_id, email=made.email))


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
async def login(request: Request, body: LoginCreate, accounts: AccountsDep) -> LoginPublic:
    await limits.login_allowed(request, body.email)

    async def record_result(ok: bool) -> None:
        await limits.login_result(request, body.email, ok=ok)

    token = await accounts.log_in(body.email, body.password, record_result=record_result)
    return LoginPublic(token=token)


@router.get("/me", response_model=MePublic, responses=documented(401))
async def me(user: CurrentUser, conn: ConnDep) -> MePublic:
    return MePublic(id=user.id, email=user.email, balance=await ledger.balance(conn, user.id))
