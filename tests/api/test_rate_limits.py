"""Rate limits hold across API processes: two more API processes with limits on (the
session's main API runs with them off) share Redis with it, and a client alternating
between them gets exactly the quota, then 429 with Retry-After."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool

from infra import supervisor
from tests.conftest import Stack, insert_generation
from tests.support.client import User, signup
from tests.support.mailbox import Mailbox
from tests.support.photos import photo

LIMITED_ENV = {
    "BITBUDDIES_RATE_LIMITS": "on",
    "BITBUDDIES_SIGNUPS_PER_IP_PER_HOUR": "4",
    "BITBUDDIES_LOGINS_PER_IP_PER_MINUTE": "1000",
    "BITBUDDIES_LOGIN_FAILURES_BEFORE_BACKOFF": "3",
    "BITBUDDIES_GENERATION_STARTS_PER_USER_PER_MINUTE": "2",
    "BITBUDDIES_OPEN_STREAMS_PER_USER": "3",
    "BITBUDDIES_MAILS_PER_ADDRESS_PER_HOUR": "3",
    "BITBUDDIES_CHECKOUTS_PER_USER_PER_HOUR": "2",
}


@pytest.fixture(scope="module")
def limited_apis(stack: Stack) -> Iterator[list[str]]:
    """Two API processes with rate limits on, beside the session's own."""
    started = []
    try:
        for n in range(2):
            cfg = dataclasses.replace(
                stack.cfg,
                ports=dataclasses.replace(stack.cfg.ports, api=supervisor.free_port()),
                extra_env={**stack.cfg.extra_env, **LIMITED_ENV},
            )
            api = supervisor.api(cfg)
            api.name = f"limited-api-{n}"
            api.log_path = stack.cfg.data_dir / "logs" / f"limited-api-{n}.log"
            started.append(api)
            api.start()
        yield [f"http://127.0.0.1:{a.argv[a.argv.index('--port') + 1]}" for a in started]
    finally:
        for api in started:
            api.stop()


@pytest.fixture
async def clients(limited_apis: list[str]) -> AsyncIterator[list[httpx.AsyncClient]]:
    async with (
        httpx.AsyncClient(base_url=limited_apis[0], timeout=30) as a,
        httpx.AsyncClient(base_url=limited_apis[1], timeout=30) as b,
    ):
        yield [a, b]


def _assert_429(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "rate_limited"
    assert int(response.headers["retry-after"]) >= 1


async def test_signups_per_address_hold_across_processes(
    clients: list[httpx.AsyncClient],
) -> None:
    answers = []
    for i in range(6):
        body = {"email": f"{uuid.uuid4().hex}@example.com", "password": "correct horse"}
        answers.append(await clients[i % 2].post("/v1/auth/signup", json=body))
    assert [a.status_code for a in answers[:4]] == [201] * 4
    for answer in answers[4:]:
        _assert_429(answer)


async def test_mails_to_one_address_are_capped_whoever_asks_and_on_every_process(
    http: httpx.AsyncClient, clients: list[httpx.AsyncClient], mailbox: Mailbox
) -> None:
    user = await signup(http)  # the main API: no limits; its sign-up mailed once
    await mailbox.wait_for(user.email, "Confirm your email")
    reset = {"email": user.email}
    answers = [
        await clients[0].post("/v1/auth/password-reset", json=reset),
        await clients[1].post("/v1/me/verification", headers=user.headers),
        await clients[0].post("/v1/auth/password-reset", json=reset),
        await clients[1].post("/v1/auth/password-reset", json=reset),
        await clients[0].post("/v1/me/verification", headers=user.headers),
    ]
    assert [a.status_code for a in answers[:3]] == [202, 202, 202]
    for answer in answers[3:]:
        _assert_429(answer)
    await mailbox.wait_for(user.email, "Reset your BitBuddies password", count=2)
    await asyncio.sleep(0.5)  # mail goes in the background: nothing more arrives
    assert len(mailbox.to(user.email)) == 1 + 3
    # Another address has its own allowance.
    other = await clients[1].post("/v1/auth/password-reset", json={"email": "x@example.com"})
    assert other.status_code == 202


async def test_failed_logins_slow_down_then_a_success_resets(
    http: httpx.AsyncClient, clients: list[httpx.AsyncClient]
) -> None:
    user = await signup(http)  # the main API: no limits
    wrong = {"email": user.email, "password": "not my password"}
    right = {"email": user.email, "password": "correct horse"}
    for i in range(3):  # the free failures, spread over both processes
        assert (await clients[i % 2].post("/v1/auth/login", json=wrong)).status_code == 401
    for client in clients:  # now even the right password waits
        _assert_429(await client.post("/v1/auth/login", json=right))
    await asyncio.sleep(1.2)  # the first delay is 1 s after the last failure
    assert (await clients[1].post("/v1/auth/login", json=right)).status_code == 200
    assert (await clients[0].post("/v1/auth/login", json=wrong)).status_code == 401


async def test_generation_starts_per_user_hold_across_processes(
    http: httpx.AsyncClient, clients: list[httpx.AsyncClient]
) -> None:
    user = await signup(http)
    started = []
    for i in range(3):
        response = await clients[i % 2].post(
            "/v1/generations",
            headers=user.headers,
            files={"photo": ("p.png", photo("astronaut.png"), "image/png")},
            data={"prompt": "a knight"},
        )
        started.append(response)
    assert [r.status_code for r in started[:2]] == [202, 202]
    _assert_429(started[2])
    assert await user.balance() == 1  # the refused start charged nothing
    for response in started[:2]:
        events = await user.events(response.json()["id"])
        assert events[-1].event == "completed"


async def test_checkouts_per_user_hold_across_processes_and_open_nothing_once_refused(
    http: httpx.AsyncClient,
    clients: list[httpx.AsyncClient],
    db: AsyncConnectionPool,  # type: ignore[type-arg]
) -> None:
    user = await signup(http)
    opened = [
        await clients[i % 2].post(
            "/v1/billing/checkout", json={"pack": "pack-10"}, headers=user.headers
        )
        for i in range(3)
    ]
    assert [r.status_code for r in opened[:2]] == [200, 200]
    _assert_429(opened[2])
    async with db.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) AS n FROM checkout_sessions WHERE user_id = %s", (uuid.UUID(user.id),)
        )
        row = await cur.fetchone()
    assert row is not None and row["n"] == 2
    other = await signup(http)  # another user's quota is their own
    mine = await clients[0].post(
        "/v1/billing/checkout", json={"pack": "pack-10"}, headers=other.headers
    )
    assert mine.status_code == 200, mine.text


async def test_open_streams_per_user_hold_across_processes_and_free_on_close(
    db: AsyncConnectionPool,  # type: ignore[type-arg]
    http: httpx.AsyncClient,
    limited_apis: list[str],
) -> None:
    user = await signup(http)
    other = await signup(http)
    waiting = await insert_generation(db, uuid.UUID(user.id))
    theirs = await insert_generation(db, uuid.UUID(other.id))
    async with contextlib.AsyncExitStack() as streams:

        async def open_stream(base: str, who: User, generation: uuid.UUID) -> httpx.Response:
            client = await streams.enter_async_context(httpx.AsyncClient(base_url=base))
            return await streams.enter_async_context(
                client.stream("GET", f"/v1/generations/{generation}/events", headers=who.headers)
            )

        held = [await open_stream(limited_apis[i % 2], user, waiting) for i in range(3)]
        assert [r.status_code for r in held] == [200] * 3
        refused = await open_stream(limited_apis[1], user, waiting)
        await refused.aread()
        _assert_429(refused)
        # Another user's streams are not counted against this one.
        assert (await open_stream(limited_apis[0], other, theirs)).status_code == 200

        # Closing a stream frees its place at once, not when its lease lapses.
        await held[0].aclose()
        for _ in range(50):
            again = await open_stream(limited_apis[1], user, waiting)
            if again.status_code == 200:
                break
            await again.aread()
            await asyncio.sleep(0.1)
        assert again.status_code == 200, again.text


async def test_while_redis_is_down_the_limits_step_aside_and_nothing_errs(
    stack: Stack, http: httpx.AsyncClient, clients: list[httpx.AsyncClient]
) -> None:
    """Limits live in Redis; an outage must not turn sign-ups, log-ins, starts and
    streams into errors (a browser's EventSource gives up for good on one). This
    address's sign-up quota is spent by the tests above; it is not checked meanwhile."""
    user = dataclasses.replace(await signup(http), http=clients[0])
    stack.crash_redis()
    try:
        newcomer = await signup(clients[1])
        login = await clients[0].post(
            "/v1/auth/login", json={"email": newcomer.email, "password": "correct horse"}
        )
        assert login.status_code == 200, login.text
        wrong = await clients[0].post(
            "/v1/auth/login", json={"email": newcomer.email, "password": "not it at all"}
        )
        assert wrong.status_code == 401, wrong.text
        started = await user.generate(photo("astronaut.png"))
        assert started.status_code == 202, started.text
        events = await asyncio.wait_for(user.watch(started.json()["id"]), 120)
        assert events[-1].event == "completed"
        assert [e.id for e in events] == list(range(1, len(events) + 1))
    finally:
        stack.start_redis()
