"""Email verification and password reset by email. The stack's API mails a real SMTP
server in the test process (tests/support/mailbox.py); each test reads the mail and
follows its link as the web page would (POSTing the token from after ``#token=``)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool

from api.services.accounts import AccountService
from api.services.errors import InvalidToken
from api.services.passwords import Passwords
from billing import ledger
from infra.database import open_pool, records
from infra.mail import Letter, Mailer, MailNotConfigured
from infra.settings import Settings
from tests.conftest import Stack
from tests.support.client import User, signup
from tests.support.mailbox import Mailbox, link_of

Pool = AsyncConnectionPool  # type: ignore[type-arg]
PASSWORD = "correct horse"
NEW_PASSWORD = "a much better secret"
VERIFY = "Confirm your email"
RESET = "Reset your BitBuddies password"


async def _verify(http: httpx.AsyncClient, token: str) -> httpx.Response:
    return await http.post("/v1/auth/verify-email", json={"token": token})


async def _me(http: httpx.AsyncClient, user: User) -> dict[str, object]:
    response = await http.get("/v1/me", headers=user.headers)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def _refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code and response.json()["error"]["message"]


async def test_sign_up_mails_a_link_that_verifies_the_email_once(
    stack: Stack, http: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    user = await signup(http)
    assert await _me(http, user) == {
        "id": user.id,
        "email": user.email,
        "balance": 3,  # local mode grants at sign-up, verified or not
        "owed": 0,
        "email_verified": False,
    }
    mail = await mailbox.wait_for(user.email, VERIFY)
    page, first = link_of(mail)
    assert page == f"{stack.cfg.api_url}/verify-email"

    resent = await http.post("/v1/me/verification", headers=user.headers)
    assert resent.status_code == 202
    _, second = link_of(await mailbox.wait_for(user.email, VERIFY, count=2))
    assert second != first

    verified = await _verify(http, second)
    assert verified.status_code == 200, verified.text
    assert verified.json() == {"verified": True, "granted": 0}  # granted at sign-up already
    assert await _me(http, user) == {
        "id": user.id,
        "email": user.email,
        "balance": 3,
        "owed": 0,
        "email_verified": True,
    }
    # Used once; and its sibling went with it.
    for used in (second, first):
        _refused(await _verify(http, used), 400, "invalid_token")
    # Verified: a resend sends nothing.
    assert (await http.post("/v1/me/verification", headers=user.headers)).status_code == 202
    later = await signup(http)  # once its mail is in, the resend's would have been too
    await mailbox.wait_for(later.email, VERIFY)
    assert len(mailbox.to(user.email)) == 2


async def test_a_bad_or_expired_verification_link_is_refused(
    http: httpx.AsyncClient, db: Pool, mailbox: Mailbox
) -> None:
    for junk in ("nonsense", "x" * 200):
        _refused(await _verify(http, junk), 400, "invalid_token")
    for malformed in ({"token": ""}, {"token": "x" * 201}, {}):
        response = await http.post("/v1/auth/verify-email", json=malformed)
        _refused(response, 422, "invalid_request")
    user = await signup(http)
    _, token = link_of(await mailbox.wait_for(user.email, VERIFY))
    async with db.connection() as conn:
        await conn.execute(
            "UPDATE email_tokens SET expires_at = now() - interval '1 second' WHERE user_id = %s",
            (uuid.UUID(user.id),),
        )
    _refused(await _verify(http, token), 400, "invalid_token")
    assert (await _me(http, user))["email_verified"] is False


@pytest.fixture
async def production(
    stack: Stack, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[AccountService, Pool]]:
    """AccountService as a production API runs it (no HTTP), on the stack's database and
    mailing the same SMTP server."""
    for name, value in stack.cfg.app_env().items():
        monkeypatch.setenv(name, value)
    settings = Settings(
        environment="production",
        signing_secret="a-real-secret-of-this-deployment",  # type: ignore[arg-type]
        fal_key="fal-key",  # type: ignore[arg-type]
        smtp_url=mailbox.url,  # type: ignore[arg-type]
        public_url="https://bitbuddies.example",
    )
    pool = open_pool(settings.database_url, max_size=2)
    await pool.open(wait=True)
    try:
        yield AccountService(pool, settings, Passwords(concurrency=1, max_wait=30)), pool
    finally:
        await pool.close()


async def test_in_production_the_free_tokens_wait_for_the_verified_email(
    production: tuple[AccountService, Pool], mailbox: Mailbox
) -> None:
    accounts, pool = production
    email = f"prod-{uuid.uuid4().hex[:12]}@example.com"
    made = await accounts.sign_up(email, PASSWORD)
    async with pool.connection() as conn:
        assert await ledger.balance(conn, made.user_id) == 0  # nothing before verification
    page, token = link_of(await mailbox.wait_for(email, VERIFY))
    assert page == "https://bitbuddies.example/verify-email"

    assert (await accounts.verify_email(token)).granted == 3
    async with pool.connection() as conn:
        assert await ledger.balance(conn, made.user_id) == 3
        assert await records.email_verified(conn, made.user_id)
    with pytest.raises(InvalidToken):
        await accounts.verify_email(token)
    # Another valid link for the same account grants nothing more.
    async with pool.connection() as conn:
        await records.insert_email_token(
            conn, "another-link", made.user_id, "verify_email", timedelta(hours=1)
        )
    assert (await accounts.verify_email("another-link")).granted == 0
    async with pool.connection() as conn:
        assert await ledger.balance(conn, made.user_id) == 3


def test_a_production_api_refuses_to_start_without_a_mail_server() -> None:
    settings = Settings(
        environment="production",
        signing_secret="a-real-secret-of-this-deployment",  # type: ignore[arg-type]
        fal_key="fal-key",  # type: ignore[arg-type]
        smtp_url=None,
    )
    with pytest.raises(MailNotConfigured):
        Mailer.from_settings(settings)


async def test_without_a_mail_server_the_link_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    link = "http://127.0.0.1:8000/verify-email#token=abc"
    letter = Letter(to="a@example.com", subject="s", body=link, link=link, purpose="test")
    with caplog.at_level(logging.WARNING, logger="bitbuddies.mail"):
        await Mailer(None, "from@example.com").send(letter)
    assert f"no SMTP configured: the test link is {link}" in caplog.text


async def test_a_password_reset_link_sets_the_password_and_ends_every_session_and_token(
    stack: Stack, http: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    user = await signup(http)
    async with httpx.AsyncClient(base_url=stack.cfg.api_url) as browser:
        opened = await browser.post(
            "/v1/auth/session", json={"email": user.email, "password": PASSWORD}
        )
        assert opened.status_code == 200
        asked = await http.post("/v1/auth/password-reset", json={"email": user.email.upper()})
        assert asked.status_code == 202 and asked.content == b""
        page, token = link_of(await mailbox.wait_for(user.email, RESET))
        assert page == f"{stack.cfg.api_url}/reset-password"

        async def confirm(new: str, with_token: str = token) -> httpx.Response:
            return await http.post(
                "/v1/auth/password-reset/confirm",
                json={"token": with_token, "new_password": new},
            )

        _refused(await confirm(NEW_PASSWORD, "not-the-token"), 400, "invalid_token")
        _refused(await confirm("password"), 422, "invalid_request")  # the link still works
        assert (await browser.get("/v1/me")).status_code == 200  # nothing changed yet
        done = await confirm(NEW_PASSWORD)
        assert done.status_code == 204, done.text
        assert (await browser.get("/v1/me")).status_code == 401
    assert (await http.get("/v1/me", headers=user.headers)).status_code == 401
    _refused(await confirm("yet another secret"), 400, "invalid_token")  # used once
    old = await http.post("/v1/auth/login", json={"email": user.email, "password": PASSWORD})
    assert old.status_code == 401
    new = await http.post("/v1/auth/login", json={"email": user.email, "password": NEW_PASSWORD})
    assert new.status_code == 200
    # The token travelled by mail only: it is in no log of the API.
    assert token not in (stack.cfg.data_dir / "logs" / "api.log").read_text(errors="replace")


async def test_a_password_reset_answers_the_same_whether_the_account_exists(
    http: httpx.AsyncClient, db: Pool, mailbox: Mailbox
) -> None:
    nobody = f"nobody-{uuid.uuid4().hex[:12]}@example.com"
    unknown = await http.post("/v1/auth/password-reset", json={"email": nobody})
    user = await signup(http)
    known = await http.post("/v1/auth/password-reset", json={"email": user.email})
    assert (
        (unknown.status_code, unknown.content)
        == (known.status_code, known.content)
        == (
            202,
            b"",
        )
    )
    await mailbox.wait_for(user.email, RESET)  # sent after the unknown one would have been
    assert mailbox.to(nobody) == []
    bad = await http.post("/v1/auth/password-reset", json={"email": "not an email"})
    _refused(bad, 422, "invalid_request")
    # An expired link is refused.
    _, token = link_of(await mailbox.wait_for(user.email, RESET))
    async with db.connection() as conn:
        await conn.execute(
            "UPDATE email_tokens SET expires_at = now() - interval '1 second' WHERE user_id = %s",
            (uuid.UUID(user.id),),
        )
    expired = await http.post(
        "/v1/auth/password-reset/confirm", json={"token": token, "new_password": NEW_PASSWORD}
    )
    _refused(expired, 400, "invalid_token")
