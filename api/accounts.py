"""The account routes: sign-up, log-in, email verification, password reset and the
caller's own account (deletion included). HTTP in, a call to AccountService
(api/services/accounts.py) or AccountDeletion (api/services/deletion.py), HTTP out."""

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
    PoolDep,
    SettingsDep,
    StorageDep,
    TemporalDep,
)
from api.errors import documented
from api.schemas import (
    AccountDelete,
    EmailToken,
    EmailVerified,
    LoginCreate,
    LoginPublic,
    MePublic,
    PasswordChange,
    PasswordResetConfirm,
    PasswordResetRequest,
    SessionPublic,
    SignupCreate,
    SignupPublic,
    UserPublic,
)
from api.services.deletion import AccountDeletion
from api.services.errors import NotSignedIn
from billing import ledger
from infra.database import records
from infra.settings import Settings

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
    """Log out: the credential this came with ends on the server (the browser session,
    whose cookie is cleared, or the bearer token)."""
    if caller.session_id is not None:
        await accounts.close_session(caller.session_id)
        _clear_session_cookie(response, settings)
    if caller.token is not None:  # a browser's own session, if any, stays
        await accounts.end_token(caller.token)


def _clear_session_cookie(response: Response, settings: Settings) -> None:
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
    return MePublic(
        id=user.id,
        email=user.email,
        balance=await ledger.balance(conn, user.id),
        owed=await ledger.owed(conn, user.id),
        email_verified=await records.email_verified(conn, user.id),
    )


@router.delete(
    "/me",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=documented(
        401,
        403,
        422,
        503,
        s401="Not signed in, or the password is wrong (nothing was deleted)",
        s403="A device token, or a session request without its CSRF token",
        s503="Running generations could not be stopped, or too many sign-ins at once;"
        " nothing was deleted, retry",
    ),
)
async def delete_account(
    response: Response,
    body: AccountDelete,
    caller: AccountHolder,
    accounts: AccountsDep,
    pool: PoolDep,
    temporal: TemporalDep,
    storage: StorageDep,
    settings: SettingsDep,
) -> None:
    """Delete the account and everything that is its: running generations are cancelled
    and refunded, characters, generations and their files deleted, every session and
    token ended. Ledger entries stay, with nothing that names the account. The session
    cookie is cleared."""
    deletion = AccountDeletion(pool, temporal, storage, settings, accounts.passwords)
    await deletion.delete(caller.user, body.password)
    _clear_session_cookie(response, settings)


@router.post(
    "/auth/verify-email",
    response_model=EmailVerified,
    responses=documented(
        400, 422, s400="The link is unknown, expired or was used already (invalid_token)"
    ),
)
async def verify_email(body: EmailToken, accounts: AccountsDep) -> EmailVerified:
    """Follow the emailed verification link (``/verify-email#token=...``): the account's
    email is verified; in production this grants the free sign-up tokens, once."""
    verified = await accounts.verify_email(body.token)
    return EmailVerified(verified=True, granted=verified.granted)


@router.post(
    "/me/verification",
    status_code=status.HTTP_202_ACCEPTED,
    response_class=Response,
    responses=documented(401, 403, 429, s429="Too many mails to this address; see Retry-After"),
)
async def resend_verification(
    request: Request, user: CurrentUser, accounts: AccountsDep
) -> Response:
    """Mail a new verification link (nothing is sent if the email is verified)."""
    await limits.mail_allowed(request, user.email)
    await accounts.resend_verification(user)
    return Response(status_code=status.HTTP_202_ACCEPTED)


@router.post(
    "/auth/password-reset",
    status_code=status.HTTP_202_ACCEPTED,
    response_class=Response,
    responses=documented(422, 429, s429="Too many requests from your address, or for this email"),
)
async def request_password_reset(
    request: Request, body: PasswordResetRequest, accounts: AccountsDep
) -> Response:
    """Mail a reset link (``/reset-password#token=...``, one hour) if an account has this
    email. The answer is the same whether one does."""
    await limits.login_allowed(request, body.email)
    await limits.mail_allowed(request, body.email)
    await accounts.request_password_reset(body.email)
    return Response(status_code=status.HTTP_202_ACCEPTED)


@router.post(
    "/auth/password-reset/confirm",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=documented(
        400,
        422,
        503,
        s400="The link is unknown, expired or was used already (invalid_token)",
        s422="A weak new password",
        s503="Too many sign-ins at once; retry",
    ),
)
async def confirm_password_reset(body: PasswordResetConfirm, accounts: AccountsDep) -> None:
    """Set the new password from a reset link; every session and bearer token of the
    account ends."""
    await accounts.reset_password(body.token, body.new_password)
