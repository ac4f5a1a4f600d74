"""Buying tokens with Stripe Checkout against the whole local stack: the API (which calls
the real ``stripe`` library), the local Stripe stand-in (infra/stripe_local/) and its
signed webhook deliveries. A paid session credits its pack exactly once, however often
and in whatever order its events come; an event we cannot verify changes nothing."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import stripe
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from billing import ledger
from tests.conftest import Stack
from tests.support.client import User, signup

WEBHOOK = "/v1/billing/stripe/webhook"
SIGNUP_TOKENS = 3  # tests/conftest.py's BITBUDDIES_SIGNUP_TOKENS
PACK = "pack-10"  # a default pack: 10 tokens for 500 EUR cents
PACK_TOKENS = 10

Pool = AsyncConnectionPool[AsyncConnection[dict[str, Any]]]


@pytest.fixture
async def stand_in(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.cfg.stripe_url, timeout=30.0) as client:
        yield client


@pytest.fixture
def secret(stack: Stack) -> str:
    """The stack's webhook secret (tests/conftest.py puts the stack's env in ours)."""
    return os.environ["BITBUDDIES_STRIPE_WEBHOOK_SECRET"]


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("not within the time allowed")
        await asyncio.sleep(0.1)


async def checkout(user: User, pack: str = PACK, key: str | None = None) -> httpx.Response:
    headers = {**user.headers, **({"Idempotency-Key": key} if key else {})}
    return await user.http.post("/v1/billing/checkout", json={"pack": pack}, headers=headers)


async def open_session(user: User) -> str:
    response = await checkout(user)
    assert response.status_code == 200, response.text
    return str(response.json()["url"]).rsplit("/", 1)[1]


def event(
    session_id: str, kind: str, payment_status: str = "paid", event_id: str | None = None
) -> dict[str, Any]:
    return {
        "id": event_id or f"evt_test_{uuid.uuid4().hex}",
        "object": "event",
        "type": kind,
        "created": int(time.time()),
        "data": {
            "object": {
                "id": session_id,
                "object": "checkout.session",
                "status": "complete",
                "payment_status": payment_status,
            }
        },
    }


async def post_event(
    http: httpx.AsyncClient,
    body: dict[str, Any] | str,
    secret: str,
    *,
    timestamp: int | None = None,
    tamper: Callable[[str], str] | None = None,
) -> httpx.Response:
    payload = body if isinstance(body, str) else json.dumps(body)
    header = stripe.WebhookSignature.generate_signature_header(
        payload, secret, timestamp=timestamp or int(time.time())
    )
    sent = tamper(payload) if tamper else payload
    return await http.post(
        WEBHOOK,
        content=sent.encode(),
        headers={"Content-Type": "application/json", "Stripe-Signature": header},
    )


async def status_of(db: Pool, session_id: str) -> str:
    async with db.connection() as conn:
        cur = await conn.execute(
            "SELECT status FROM checkout_sessions WHERE id = %s", (session_id,)
        )
        row = await cur.fetchone()
    assert row is not None
    return str(row["status"])


async def inbox(db: Pool, *, event_id: str | None = None, session_id: str | None = None) -> int:
    async with db.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) AS n FROM stripe_events WHERE id = %s OR session_id = %s",
            (event_id, session_id),
        )
        row = await cur.fetchone()
    return int(row["n"]) if row else 0


async def purchases(db: Pool, session_id: str) -> list[int]:
    async with db.connection() as conn:
        cur = await conn.execute(
            "SELECT delta FROM ledger_entries WHERE kind = 'purchase' AND idempotency_key = %s",
            (ledger.purchase_key(session_id),),
        )
        return [int(r["delta"]) for r in await cur.fetchall()]


async def pay(stand_in: httpx.AsyncClient, url: str) -> httpx.Response:
    """Open the hosted page and press its Pay button, as a buyer's browser does."""
    page = await stand_in.get(url)
    assert page.status_code == 200
    form = re.search(r'<form method="post" action="([^"]+)"><button[^>]*>Pay</button>', page.text)
    assert form, page.text
    return await stand_in.post(form.group(1))


async def deliveries(stand_in: httpx.AsyncClient, session_id: str) -> list[dict[str, Any]]:
    found = (await stand_in.get("/_local/deliveries")).json()
    return [d for d in found if d["session_id"] == session_id]


async def all_delivered(stand_in: httpx.AsyncClient, session_id: str, attempts: int) -> None:
    """Wait until the stand-in made ``attempts`` successful deliveries about the session."""

    async def done() -> bool:
        found = await deliveries(stand_in, session_id)
        ok = sum(str(a).startswith("2") for d in found for a in d["attempts"])
        return ok >= attempts

    await eventually(done)


async def test_packs_and_checkout_contract(http: httpx.AsyncClient) -> None:
    user = await signup(http)
    assert (await http.get("/v1/billing/packs")).status_code == 401
    packs = (await http.get("/v1/billing/packs", headers=user.headers)).json()["packs"]
    assert {
        "id": "pack-10",
        "name": "10 tokens",
        "tokens": 10,
        "price": 500,
        "currency": "eur",
    } in packs
    assert any(p["id"] == "pack-30" and p["tokens"] == 30 and p["price"] == 1200 for p in packs)
    assert (await http.post("/v1/billing/checkout", json={"pack": PACK})).status_code == 401
    unknown = await checkout(user, "pack-1000")
    assert unknown.status_code == 422
    assert unknown.json()["error"]["code"] == "invalid_request"
    # One Idempotency-Key, one session; the key for another pack is refused.
    first, again = await checkout(user, key="buy-1"), await checkout(user, key="buy-1")
    assert first.status_code == again.status_code == 200
    assert first.json()["url"] == again.json()["url"]
    other = await checkout(user, "pack-30", key="buy-1")
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    # Another user's same key is another request.
    someone = await signup(http)
    assert (await checkout(someone, key="buy-1")).json()["url"] != first.json()["url"]


async def test_a_purchase_end_to_end(
    stack: Stack, http: httpx.AsyncClient, stand_in: httpx.AsyncClient, db: Pool
) -> None:
    user = await signup(http)
    response = await checkout(user)
    assert response.status_code == 200, response.text
    url = response.json()["url"]
    assert url.startswith(stack.cfg.stripe_url + "/pay/cs_test_")
    session_id = url.rsplit("/", 1)[1]
    assert await status_of(db, session_id) == "open"
    # What the API asked Stripe for, read back with the real library.
    client = stripe.StripeClient("sk_test_x", base_addresses={"api": stack.cfg.stripe_url})
    session = client.v1.checkout.sessions.retrieve(session_id)
    assert session.mode == "payment" and session.amount_total == 500 and session.currency == "eur"
    assert session.client_reference_id == user.id
    assert session.metadata is not None
    assert session.metadata.to_dict() == {"user_id": user.id, "pack": PACK}
    assert session.cancel_url == f"{stack.cfg.api_url}/account?purchase=cancelled"

    paid = await pay(stand_in, url)
    assert paid.status_code == 303
    assert paid.headers["location"] == (
        f"{stack.cfg.api_url}/account?purchase=complete&session_id={session_id}"
    )

    async def credited() -> bool:
        return await user.balance() == SIGNUP_TOKENS + PACK_TOKENS

    await eventually(credited)
    assert await status_of(db, session_id) == "paid"
    assert await purchases(db, session_id) == [PACK_TOKENS]


async def test_the_same_event_five_times_credits_once(
    http: httpx.AsyncClient, stand_in: httpx.AsyncClient, db: Pool, secret: str
) -> None:
    user = await signup(http)
    url = (await checkout(user)).json()["url"]
    session_id = url.rsplit("/", 1)[1]
    await pay(stand_in, url)
    await all_delivered(stand_in, session_id, 1)
    [delivery] = await deliveries(stand_in, session_id)
    for _ in range(5):  # Stripe's "resend": the same event, the same id
        assert (await stand_in.post(f"/_local/events/{delivery['event_id']}/redeliver")).is_success
    await all_delivered(stand_in, session_id, 6)
    assert await user.balance() == SIGNUP_TOKENS + PACK_TOKENS
    assert await purchases(db, session_id) == [PACK_TOKENS]
    assert await inbox(db, event_id=delivery["event_id"]) == 1

    # Five copies of one event at once: one acts, four are answered as repeats.
    other = await open_session(user)
    body = json.dumps(event(other, "checkout.session.completed"))
    answers = await asyncio.gather(*(post_event(http, body, secret) for _ in range(5)))
    assert [a.status_code for a in answers] == [200] * 5
    assert sorted(a.json()["duplicate"] for a in answers) == [False, True, True, True, True]
    assert await user.balance() == SIGNUP_TOKENS + 2 * PACK_TOKENS
    assert await purchases(db, other) == [PACK_TOKENS]


async def test_the_same_session_under_two_event_ids_credits_once(
    http: httpx.AsyncClient, stand_in: httpx.AsyncClient, db: Pool
) -> None:
    user = await signup(http)
    url = (await checkout(user)).json()["url"]
    session_id = url.rsplit("/", 1)[1]
    await pay(stand_in, url)
    await all_delivered(stand_in, session_id, 1)
    sent = await stand_in.post(
        f"/_local/sessions/{session_id}/events",
        json={"type": "checkout.session.completed", "payment_status": "paid"},
    )
    assert sent.status_code == 202
    await all_delivered(stand_in, session_id, 2)
    assert len({d["event_id"] for d in await deliveries(stand_in, session_id)}) == 2
    assert await inbox(db, session_id=session_id) == 2  # both recorded
    assert await user.balance() == SIGNUP_TOKENS + PACK_TOKENS  # one credit
    assert await purchases(db, session_id) == [PACK_TOKENS]


async def test_events_out_of_order_end_in_the_right_state(
    http: httpx.AsyncClient, db: Pool, secret: str
) -> None:
    user = await signup(http)

    async def send(session_id: str, kind: str, payment_status: str = "paid") -> None:
        answer = await post_event(http, event(session_id, kind, payment_status), secret)
        assert answer.status_code == 200, answer.text

    # The payment cleared, and its success came before the completion that said unpaid.
    cleared = await open_session(user)
    await send(cleared, "checkout.session.async_payment_succeeded")
    await send(cleared, "checkout.session.completed", "unpaid")
    await send(cleared, "checkout.session.async_payment_failed", "unpaid")  # bogus, late
    assert await status_of(db, cleared) == "paid"
    assert await purchases(db, cleared) == [PACK_TOKENS]
    # The failure came before the completion that said unpaid: failed, nothing credited.
    failed_first = await open_session(user)
    await send(failed_first, "checkout.session.async_payment_failed", "unpaid")
    await send(failed_first, "checkout.session.completed", "unpaid")
    assert await status_of(db, failed_first) == "failed"
    assert await purchases(db, failed_first) == []
    assert await user.balance() == SIGNUP_TOKENS + PACK_TOKENS


async def test_async_payment_failed_marks_the_session_failed_without_credit(
    http: httpx.AsyncClient, stand_in: httpx.AsyncClient, db: Pool
) -> None:
    user = await signup(http)
    session_id = await open_session(user)
    for n, (kind, payment_status) in enumerate(
        [
            ("checkout.session.completed", "unpaid"),  # a bank debit, still clearing
            ("checkout.session.async_payment_failed", "unpaid"),
        ],
        start=1,
    ):
        sent = await stand_in.post(
            f"/_local/sessions/{session_id}/events",
            json={"type": kind, "payment_status": payment_status},
        )
        assert sent.status_code == 202
        await all_delivered(stand_in, session_id, n)
        if n == 1:
            assert await status_of(db, session_id) == "pending"
    assert await status_of(db, session_id) == "failed"
    assert await purchases(db, session_id) == []
    assert await user.balance() == SIGNUP_TOKENS


@pytest.mark.parametrize("forgery", ["wrong secret", "tampered", "stale", "unsigned"])
async def test_a_webhook_we_cannot_verify_changes_nothing(
    http: httpx.AsyncClient, db: Pool, secret: str, forgery: str
) -> None:
    user = await signup(http)
    session_id = await open_session(user)
    body = event(session_id, "checkout.session.completed")
    if forgery == "wrong secret":
        answer = await post_event(http, body, "whsec_someone_else")
    elif forgery == "tampered":  # signed for another event id, sent with this one
        answer = await post_event(
            http, body, secret, tamper=lambda p: p.replace(body["id"], body["id"] + "x")
        )
    elif forgery == "stale":  # a captured delivery replayed 301 s later
        answer = await post_event(http, body, secret, timestamp=int(time.time()) - 301)
    else:
        answer = await http.post(WEBHOOK, content=json.dumps(body).encode())
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "webhook_rejected"
    assert await inbox(db, event_id=body["id"]) == 0
    assert await inbox(db, event_id=body["id"] + "x") == 0
    assert await status_of(db, session_id) == "open"
    assert await user.balance() == SIGNUP_TOKENS
    # The same event, properly signed now, is acted on: the refusal was the signature's.
    assert (await post_event(http, body, secret)).status_code == 200
    assert await user.balance() == SIGNUP_TOKENS + PACK_TOKENS


async def test_an_unknown_event_type_is_recorded_and_answered(
    http: httpx.AsyncClient, db: Pool, secret: str
) -> None:
    body = {"id": f"evt_test_{uuid.uuid4().hex}", "type": "invoice.created", "data": {}}
    answer = await post_event(http, body, secret)
    assert answer.status_code == 200
    assert answer.json() == {"duplicate": False}
    assert await inbox(db, event_id=str(body["id"])) == 1
