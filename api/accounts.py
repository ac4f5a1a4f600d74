"""The account routes: sign-up, log-in and the caller's own account. HTTP in, a call to
AccountService (api/services/accounts.py), HTTP out."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Depends, Request, Response, status

from api import limits
from api.deps import (
    SESSION_COOKIE,
    AccountHolder,
    AccountsDep,
    ConnDep,
    CurrentCaller,
    CurrentUser,
    SettingsDep,
)
from api.errors import documented
from api.schemas import (
    LoginCreate,
    LoginPublic,
    MePublic,
    PasswordChange,
    SessionPublic,
    SignupCreate,
    SignupPublic,
    UserPublic,
)
from api.services.errors import NotSignedIn
from billing import ledger

router = APIRouter(prefix="/v1", tags=["accounts"])
LOGIN_ERRORS = documented(
    401,
    422,
    429,
    503,
    s401="Wrong email or password",
    s429="Too many log-ins, or wrong passwords; see Retry-After",
    s503="Too many sign-ins at once; retry",
)


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
    responses=LOGIN_ERRORS,
)
async def login(request: Request, body: LoginCreate, accounts: AccountsDep) -> LoginPublic:
    await limits.login_allowed(request, body.email)
    token = await accounts.log_in(
        body.email, body.password, record_result=_login_results(request, body.email)
    )
    return LoginPublic(token=token)


def _login_results(request: Request, email: str) -> Callable[[bool], Awaitable[None]]:
    async def record_result(ok: bool) -> None:
        await limits.login_result(request, email, ok=ok)

    return record_result


@router.post(
    "/auth/session",
    response_model=SessionPublic,
    responses=LOGIN_ERRORS,
)
async def open_session(
    request: Request,
    response: Response,
    body: LoginCreate,
    accounts: AccountsDep,
    settings: SettingsDep,
) -> SessionPublic:
    """Log in for a browser: the session id goes in an HttpOnly, SameSite=Lax cookie
    (Secure when the public URL is HTTPS), never in the body."""
    await limits.login_allowed(request, body.email)
    opened = await accounts.open_session(
        body.email, body.password, record_result=_login_results(request, body.email)
    )
    response.set_cookie(
        SESSION_COOKIE,
        opened.session_id,
        max_age=settings.session_days * 86400,
        path="/",
        httponly=True,
        samesite="lax",
        secure=settings.public_url.startswith("https://"),
    )
    return SessionPublic(
        csrf_token=opened.csrf_token,
        user=UserPublic(id=opened.user.id, email=opened.user.email),
    )


@router.get(
    "/auth/session",
    response_model=SessionPublic,
    responses=documented(401, s401="No browser session"),
)
async def current_session(caller: CurrentCaller) -> SessionPublic:
    """The session's CSRF token again (a reloaded page has lost it)."""
    if caller.csrf_token is None:
        raise NotSignedIn("This is not a browser session.")
    return SessionPublic(
        csrf_token=caller.csrf_token, user=UserPublic(id=caller.user.id, email=caller.user.email)
    )


@router.delete(
    "/auth/session",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=documented(401, 403),
)
async def close_session(
    response: Response, caller: CurrentCaller, accounts: AccountsDep, settings: SettingsDep
) -> None:
    """Log out: the session ends on the server, and the cookie is cleared."""
    if caller.session_id is not None:
        await accounts.close_session(caller.session_id)
    response.delete_cookie(
        SESSION_COOKIE,
        path="/",
        httponly=True,
        samesite="lax",
        secure=settings.public_url.startswith("https://"),
    )


@router.post(
    "/me/password",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=documented(
        401,
        403,
        422,
        503,
        s401="Not signed in, or the current password is wrong",
        s403="A device token, or a session request without its CSRF token",
        s422="A weak new password",
    ),
)
async def change_password(
    body: PasswordChange, caller: AccountHolder, accounts: AccountsDep
) -> None:
    """Change the password; every other session and bearer token of the account ends."""
    await accounts.change_password(
        caller.user,
        body.current_password,
        body.new_password,
        keep_token=caller.token,
        keep_session=caller.session_id,
    )


@router.get("/me", response_model=MePublic, responses=documented(401))
async def me(user: CurrentUser, conn: ConnDep) -> MePublic:
    return MePublic(id=user.id, email=user.email, balance=await ledger.balance(conn, user.id))
