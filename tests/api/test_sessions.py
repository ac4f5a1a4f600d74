"""Browser sessions: an HttpOnly, SameSite cookie, CSRF on every state-changing request,
log-out that ends the session on the server, and a password change that ends every
other session and token. Each browser is an HTTP client with its own cookie jar."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from infra import supervisor
from tests.conftest import Stack
from tests.support.client import User, signup
from tests.support.photos import photo

COOKIE = "bitbuddies_session"
PASSWORD = "correct horse"


@pytest.fixture
async def browser(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.cfg.api_url, timeout=60.0) as client:
        yield client


async def _log_in(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> str:
    """Log the browser in; returns the session's CSRF token."""
    response = await client.post("/v1/auth/session", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    return str(response.json()["csrf_token"])


def _set_cookie(response: httpx.Response) -> str:
    [header] = [v for v in response.headers.get_list("set-cookie") if v.startswith(COOKIE)]
    return header


async def _terminal_event(client: httpx.AsyncClient, generation_id: str) -> str:
    """Follow the event stream with the cookie alone, as EventSource does."""
    async with client.stream("GET", f"/v1/generations/{generation_id}/events") as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("event: ") and line[7:] in ("completed", "failed"):
                return line[7:]
    raise AssertionError("the stream ended without a terminal event")


async def test_a_browser_signs_in_with_a_cookie_and_needs_its_csrf_token_to_change_anything(
    http: httpx.AsyncClient, browser: httpx.AsyncClient
) -> None:
    user = await signup(http)
    response = await browser.post(
        "/v1/auth/session", json={"email": user.email, "password": PASSWORD}
    )
    assert response.status_code == 200
    cookie = _set_cookie(response).lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "path=/" in cookie
    assert "secure" not in cookie  # served over http here
    assert f"max-age={14 * 86400}" in cookie
    session_id = browser.cookies[COOKIE]
    assert session_id not in response.text  # the id travels only in the cookie
    csrf = response.json()["csrf_token"]
    assert response.json()["user"] == {"id": user.id, "email": user.email}

    me = await browser.get("/v1/me")  # the cookie alone
    assert me.status_code == 200 and me.json()["balance"] == 3
    again = await browser.get("/v1/auth/session")
    assert again.status_code == 200 and again.json()["csrf_token"] == csrf

    async def start(headers: dict[str, str]) -> httpx.Response:
        return await browser.post(
            "/v1/generations",
            headers=headers,
            files={"photo": ("me.png", photo("astronaut.png"), "image/png")},
            data={"prompt": "a knight"},
        )

    for refused in (
        {},  # no token: what a form posted by another site would send
        {"X-CSRF-Token": "not-the-token"},
        {"X-CSRF-Token": csrf, "Origin": "https://evil.example"},
    ):
        answer = await start(refused)
        assert answer.status_code == 403, answer.text
        assert answer.json()["error"]["code"] == "csrf_failed"
    assert (await browser.get("/v1/me")).json()["balance"] == 3  # nothing was charged

    same_site = str(browser.base_url).rstrip("/")
    started = await start({"X-CSRF-Token": csrf, "Origin": same_site})
    assert started.status_code == 202, started.text
    generation_id = started.json()["id"]
    assert await _terminal_event(browser, generation_id) == "completed"
    # A bearer client needs no CSRF token: no browser sends its Authorization header.
    assert (await user.generate(photo("astronaut.png"))).status_code == 202


async def test_log_out_ends_the_session_on_the_server(
    stack: Stack, http: httpx.AsyncClient, browser: httpx.AsyncClient
) -> None:
    user = await signup(http)
    csrf = await _log_in(browser, user.email)
    session_id = browser.cookies[COOKIE]
    assert (await browser.delete("/v1/auth/session")).status_code == 403  # no CSRF token
    assert (await browser.get("/v1/me")).status_code == 200
    out = await browser.delete("/v1/auth/session", headers={"X-CSRF-Token": csrf})
    assert out.status_code == 204
    assert "max-age=0" in _set_cookie(out).lower()  # the browser forgets it
    # The old cookie, replayed by anyone who kept it, no longer signs in.
    async with httpx.AsyncClient(
        base_url=stack.cfg.api_url, cookies={COOKIE: session_id}
    ) as replay:
        answer = await replay.get("/v1/me")
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "unauthorized"


async def test_a_session_id_planted_before_log_in_is_never_the_one_signed_in(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    user = await signup(http)
    planted = {"Cookie": f"{COOKIE}=planted-by-an-attacker"}
    async with httpx.AsyncClient(base_url=stack.cfg.api_url) as victim:
        response = await victim.post(
            "/v1/auth/session", json={"email": user.email, "password": PASSWORD}, headers=planted
        )
    assert response.status_code == 200
    assert "planted-by-an-attacker" not in _set_cookie(response)  # a new id, always
    async with httpx.AsyncClient(base_url=stack.cfg.api_url) as attacker:
        assert (await attacker.get("/v1/me", headers=planted)).status_code == 401


async def test_a_password_change_ends_every_other_session_and_token(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    user = await signup(http)  # holds the sign-up's bearer token
    login = await http.post("/v1/auth/login", json={"email": user.email, "password": PASSWORD})
    other_token = User(http, login.json()["token"], user.id, user.email)
    async with (
        httpx.AsyncClient(base_url=stack.cfg.api_url) as here,
        httpx.AsyncClient(base_url=stack.cfg.api_url) as elsewhere,
    ):
        csrf = await _log_in(here, user.email)
        await _log_in(elsewhere, user.email)

        async def change(current: str, new: str, token: str | None = csrf) -> httpx.Response:
            return await here.post(
                "/v1/me/password",
                headers={"X-CSRF-Token": token} if token else {},
                json={"current_password": current, "new_password": new},
            )

        wrong = await change("not the password", "a much better secret")
        assert wrong.status_code == 401
        weak = await change(PASSWORD, "password")
        assert weak.status_code == 422
        no_csrf = await change(PASSWORD, "a much better secret", token=None)
        assert no_csrf.status_code == 403
        for still in (here, elsewhere):  # nothing ended by the refused changes
            assert (await still.get("/v1/me")).status_code == 200
        assert (await http.get("/v1/me", headers=other_token.headers)).status_code == 200

        done = await change(PASSWORD, "a much better secret")
        assert done.status_code == 204, done.text
        assert (await here.get("/v1/me")).status_code == 200  # the session it came from
        assert (await elsewhere.get("/v1/me")).status_code == 401
    for token in (user, other_token):
        assert (await http.get("/v1/me", headers=token.headers)).status_code == 401
    old = await http.post("/v1/auth/login", json={"email": user.email, "password": PASSWORD})
    assert old.status_code == 401
    new = await http.post(
        "/v1/auth/login", json={"email": user.email, "password": "a much better secret"}
    )
    assert new.status_code == 200


@pytest.fixture(scope="module")
def https_api(stack: Stack) -> Iterator[str]:
    """An API process whose public URL is HTTPS (behind a TLS proxy, as in production)."""
    cfg = dataclasses.replace(
        stack.cfg,
        ports=dataclasses.replace(stack.cfg.ports, api=supervisor.free_port()),
        extra_env={**stack.cfg.extra_env, "BITBUDDIES_PUBLIC_URL": "https://bitbuddies.test"},
    )
    api = supervisor.api(cfg)
    api.name = "https-api"
    api.log_path = stack.cfg.data_dir / "logs" / "https-api.log"
    api.start()
    try:
        yield f"http://127.0.0.1:{cfg.ports.api}"
    finally:
        api.stop()


async def test_served_over_https_the_cookie_is_secure(
    http: httpx.AsyncClient, https_api: str
) -> None:
    user = await signup(http)
    async with httpx.AsyncClient(base_url=https_api) as client:
        response = await client.post(
            "/v1/auth/session", json={"email": user.email, "password": PASSWORD}
        )
    assert response.status_code == 200, response.text
    assert "secure" in _set_cookie(response).lower()


async def test_log_out_with_a_bearer_token_ends_that_token_only(http: httpx.AsyncClient) -> None:
    user = await signup(http)
    other = await http.post("/v1/auth/login", json={"email": user.email, "password": PASSWORD})
    kept = {"Authorization": f"Bearer {other.json()['token']}"}
    assert (await http.delete("/v1/auth/session", headers=user.headers)).status_code == 204
    ended = await http.get("/v1/me", headers=user.headers)
    assert ended.status_code == 401 and ended.json()["error"]["code"] == "unauthorized"
    assert (await http.get("/v1/me", headers=kept)).status_code == 200
