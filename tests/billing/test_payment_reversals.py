"""Refunds and disputes of token purchases, against the whole local stack: the API, the
local Stripe stand-in (its refunds made with the real ``stripe`` library, its disputes
opened by its test hooks) and its signed webhooks. The tokens a payment bought are taken
back in proportion to the money that went back, once, whatever the order or number of
the events; what was spent already becomes a debt that blocks new generations until a
purchase settles it; a dispute won gives back what it took."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import stripe

from billing import payments
from tests.conftest import Stack, insert_generation
from tests.support.client import User, signup
from tests.support.faults import Pool, assert_ledger_consistent
from tests.support.photos import photo

WEBHOOK = "/v1/billing/stripe/webhook"
SIGNUP_TOKENS = 3  # tests/conftest.py's BITBUDDIES_SIGNUP_TOKENS
PACK = "pack-10"  # 10 tokens for 500 EUR cents
PACK_TOKENS = 10
PACK_PRICE = 500


@pytest.fixture
async def stand_in(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.cfg.stripe_url, timeout=30.0) as client:
        yield client


@pytest.fixture
def stripe_api(stack: Stack) -> stripe.StripeClient:
    """The real ``stripe`` library, pointed at the stand-in: what the owner's refund
    from a dashboard or script does."""
    return stripe.StripeClient(payments.LOCAL_API_KEY, base_addresses={"api": stack.cfg.stripe_url})


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("not within the time allowed")
        await asyncio.sleep(0.1)


async def me(user: User) -> dict[str, Any]:
    response = await user.http.get("/v1/me", headers=user.headers)
    response.raise_for_status()
    return dict(response.json())


async def balance_becomes(user: User, tokens: int) -> None:
    async def there() -> bool:
        return await user.balance() == tokens

    await eventually(there)


async def open_session(user: User) -> str:
    response = await user.http.post(
        "/v1/billing/checkout", json={"pack": PACK}, headers=user.headers
    )
    assert response.status_code == 200, response.text
    return str(response.json()["url"]).rsplit("/", 1)[1]


async def buy(user: User, stand_in: httpx.AsyncClient, *, settles: int = 0) -> tuple[str, str]:
    """A pack bought and credited (less the debt it ``settles``): (its session id, its
    PaymentIntent id)."""
    before = await user.balance()
    session_id = await open_session(user)
    paid = await stand_in.post(f"/pay/{session_id}")
    assert paid.status_code == 303, paid.text
    await balance_becomes(user, before + PACK_TOKENS - settles)
    session = (await stand_in.get(f"/v1/checkout/sessions/{session_id}")).json()
    return session_id, str(session["payment_intent"])


async def spend(db: Pool, user: User, tokens: int) -> None:
    """``tokens`` characters delivered: each a charged generation that completed."""
    for _ in range(tokens):
        generation_id = await insert_generation(db, uuid.UUID(user.id), charged=True)
        async with db.connection() as conn:
            await conn.execute(
                "UPDATE generations SET status = 'completed' WHERE id = %s", (generation_id,)
            )


async def deliveries_of(stand_in: httpx.AsyncClient, kind: str, intent: str) -> list[Any]:
    found = (await stand_in.get("/_local/deliveries")).json()
    return [d for d in found if d["type"] == kind and d["payment_intent"] == intent]


async def delivered(stand_in: httpx.AsyncClient, kind: str, intent: str, times: int = 1) -> None:
    async def done() -> bool:
        found = await deliveries_of(stand_in, kind, intent)
        return sum(str(a).startswith("2") for d in found for a in d["attempts"]) >= times

    await eventually(done)


async def statement(user: User) -> list[dict[str, Any]]:
    response = await user.http.get("/v1/billing/ledger", headers=user.headers)
    response.raise_for_status()
    return list(response.json()["entries"])


def post_signed(http: httpx.AsyncClient, body: dict[str, Any]) -> Awaitable[httpx.Response]:
    payload = json.dumps(body)
    header = stripe.WebhookSignature.generate_signature_header(
        payload, os.environ["BITBUDDIES_STRIPE_WEBHOOK_SECRET"], timestamp=int(time.time())
    )
    return http.post(
        WEBHOOK,
        content=payload.encode(),
        headers={"Content-Type": "application/json", "Stripe-Signature": header},
    )


def dispute_event(kind: str, dispute_id: str, intent: str, status: str) -> dict[str, Any]:
    return {
        "id": f"evt_test_{uuid.uuid4().hex}",
        "object": "event",
        "type": kind,
        "created": int(time.time()),
        "data": {
            "object": {
                "id": dispute_id,
                "object": "dispute",
                "amount": PACK_PRICE,
                "payment_intent": intent,
                "status": status,
            }
        },
    }


async def test_a_refund_takes_back_the_unspent_tokens_once_however_often_it_comes(
    http: httpx.AsyncClient,
    db: Pool,
    stand_in: httpx.AsyncClient,
    stripe_api: stripe.StripeClient,
) -> None:
    user = await signup(http)
    session_id, intent = await buy(user, stand_in)

    refund = await stripe_api.v1.refunds.create_async({"payment_intent": intent})
    assert refund.amount == PACK_PRICE
    await balance_becomes(user, SIGNUP_TOKENS)
    await delivered(stand_in, payments.CHARGE_REFUNDED, intent)
    [delivery] = await deliveries_of(stand_in, payments.CHARGE_REFUNDED, intent)
    for _ in range(4):  # Stripe's "resend", four more times
        resent = await stand_in.post(f"/_local/events/{delivery['event_id']}/redeliver")
        assert resent.status_code == 202
    await delivered(stand_in, payments.CHARGE_REFUNDED, intent, times=5)

    assert await user.balance() == SIGNUP_TOKENS
    entries = await statement(user)
    reversals = [e for e in entries if e["kind"] == "reversal"]
    assert [(e["delta"], e["payment_id"]) for e in reversals] == [(-PACK_TOKENS, session_id)]
    assert reversals[0]["reason"] == "Taken back: a payment was refunded or disputed"
    [purchase] = [e for e in entries if e["kind"] == "purchase"]
    assert purchase["payment_id"] == session_id
    assert (await me(user))["owed"] == 0
    await assert_ledger_consistent(db, [user])


async def test_a_partial_refund_takes_back_its_share_rounded_up(
    http: httpx.AsyncClient,
    db: Pool,
    stand_in: httpx.AsyncClient,
    stripe_api: stripe.StripeClient,
) -> None:
    user = await signup(http)
    _, intent = await buy(user, stand_in)

    await stripe_api.v1.refunds.create_async({"payment_intent": intent, "amount": 250})
    await balance_becomes(user, SIGNUP_TOKENS + 5)  # half the money: half the tokens
    await stripe_api.v1.refunds.create_async({"payment_intent": intent, "amount": 1})
    await balance_becomes(user, SIGNUP_TOKENS + 4)  # a cent more: a sixth token
    await delivered(stand_in, payments.CHARGE_REFUNDED, intent, times=2)
    assert [e["delta"] for e in await statement(user) if e["kind"] == "reversal"] == [-1, -5]
    await assert_ledger_consistent(db, [user])


async def test_a_refunded_purchase_whose_tokens_were_spent_leaves_a_debt_that_blocks_generations(
    http: httpx.AsyncClient,
    db: Pool,
    stand_in: httpx.AsyncClient,
    stripe_api: stripe.StripeClient,
) -> None:
    user = await signup(http)
    await buy(user, stand_in)
    await spend(db, user, SIGNUP_TOKENS + 8)  # 2 of the pack's 10 left
    assert await user.balance() == 2
    _, intent = await buy(user, stand_in)  # a second pack: 12
    first = [s for s in await statement(user) if s["kind"] == "purchase"][-1]["payment_id"]
    first_intent = (await stand_in.get(f"/v1/checkout/sessions/{first}")).json()["payment_intent"]

    await stripe_api.v1.refunds.create_async({"payment_intent": first_intent})
    await balance_becomes(user, 2)  # the first pack's 10 came out of the 12 unspent
    await stripe_api.v1.refunds.create_async({"payment_intent": intent})
    await balance_becomes(user, 0)  # the second's: 2 unspent taken back, 8 owed
    assert (await me(user))["owed"] == 8

    refused = await user.generate(photo("astronaut.png"))
    assert refused.status_code == 402, refused.text
    error = refused.json()["error"]
    assert error["code"] == "tokens_owed"
    assert error["details"] == {"owed": 8}
    assert "owe 8 tokens" in error["message"]

    await buy(user, stand_in, settles=8)  # 10 more: 8 settle the debt, 2 to spend
    assert (await me(user))["owed"] == 0
    assert await user.balance() == 2
    newest = await statement(user)
    assert [(e["kind"], e["delta"]) for e in newest[:2]] == [("debt", -8), ("purchase", 10)]
    await assert_ledger_consistent(db, [user])


async def test_a_dispute_holds_the_tokens_and_a_dispute_won_gives_them_back(
    http: httpx.AsyncClient, db: Pool, stand_in: httpx.AsyncClient
) -> None:
    user = await signup(http)
    _, intent = await buy(user, stand_in)
    await spend(db, user, SIGNUP_TOKENS + 4)  # 6 unspent

    opened = await stand_in.post(f"/_local/payments/{intent}/disputes", json={})
    assert opened.status_code == 201
    dispute_id = opened.json()["dispute"]["id"]
    await balance_becomes(user, 0)
    assert (await me(user))["owed"] == 4
    async with db.connection() as conn:
        cur = await conn.execute(
            "SELECT title, message, link FROM alerts WHERE kind = 'payment_disputed'"
            " AND user_id = %s",
            (uuid.UUID(user.id),),
        )
        [alert] = await cur.fetchall()
    assert alert["title"] == "A payment was disputed"
    assert intent in alert["message"] and alert["link"].endswith(intent)

    closed = await stand_in.post(f"/_local/disputes/{dispute_id}/close", json={"status": "won"})
    assert closed.status_code == 200
    await balance_becomes(user, 6)  # the debt cancelled, the 6 unspent given back
    assert (await me(user))["owed"] == 0
    kinds = [(e["kind"], e["delta"]) for e in await statement(user)][:2]
    assert kinds == [("reinstatement", 6), ("reversal", -6)]

    # The opening again after the close (a late retry): a closed dispute stays closed.
    late = dispute_event("charge.dispute.created", dispute_id, intent, "needs_response")
    assert (await post_signed(http, late)).status_code == 200
    assert await user.balance() == 6
    await assert_ledger_consistent(db, [user])


async def test_dispute_events_out_of_order_end_as_the_dispute_did(
    http: httpx.AsyncClient, db: Pool, stand_in: httpx.AsyncClient
) -> None:
    user = await signup(http)
    _, won_intent = await buy(user, stand_in)
    _, lost_intent = await buy(user, stand_in)
    total = SIGNUP_TOKENS + 2 * PACK_TOKENS

    # A dispute won: its close arrives before its opening.
    won_id, lost_id = f"dp_test_{uuid.uuid4().hex}", f"dp_test_{uuid.uuid4().hex}"
    won = dispute_event("charge.dispute.closed", won_id, won_intent, "won")
    assert (await post_signed(http, won)).status_code == 200
    opening = dispute_event("charge.dispute.created", won_id, won_intent, "needs_response")
    assert (await post_signed(http, opening)).status_code == 200
    assert await user.balance() == total

    # A dispute lost: the same, and the tokens stay taken.
    lost = dispute_event("charge.dispute.closed", lost_id, lost_intent, "lost")
    assert (await post_signed(http, lost)).status_code == 200
    opening = dispute_event("charge.dispute.created", lost_id, lost_intent, "needs_response")
    assert (await post_signed(http, opening)).status_code == 200
    assert await user.balance() == total - PACK_TOKENS
    await assert_ledger_consistent(db, [user])


async def test_a_refund_before_its_checkout_event_credits_and_takes_back_once(
    http: httpx.AsyncClient,
    db: Pool,
    stand_in: httpx.AsyncClient,
    stripe_api: stripe.StripeClient,
) -> None:
    user = await signup(http)
    session_id = await open_session(user)
    # Paid, but its checkout.session.completed is still on its way ...
    paid = await stand_in.post(f"/_local/sessions/{session_id}/paid")
    intent = paid.json()["payment_intent"]
    # ... when the refund's event comes: the API asks Stripe which session it paid.
    await stripe_api.v1.refunds.create_async({"payment_intent": intent})
    await delivered(stand_in, payments.CHARGE_REFUNDED, intent)
    assert await user.balance() == SIGNUP_TOKENS
    # Now the completion arrives: credited already, and taken back already.
    sent = await stand_in.post(
        f"/_local/sessions/{session_id}/events",
        json={"type": payments.SESSION_COMPLETED, "payment_status": "paid"},
    )
    assert sent.status_code == 202
    await eventually(
        lambda: _delivered_session_event(stand_in, session_id, payments.SESSION_COMPLETED)
    )
    assert await user.balance() == SIGNUP_TOKENS
    kinds = sorted((e["kind"], e["delta"]) for e in await statement(user))
    assert kinds == [("purchase", PACK_TOKENS), ("reversal", -PACK_TOKENS), ("signup_grant", 3)]
    await assert_ledger_consistent(db, [user])


async def _delivered_session_event(stand_in: httpx.AsyncClient, session_id: str, kind: str) -> bool:
    found = (await stand_in.get("/_local/deliveries")).json()
    return any(
        d["session_id"] == session_id and d["type"] == kind and d["delivered"] for d in found
    )


async def test_a_refund_of_a_payment_that_is_not_ours_changes_nothing(
    http: httpx.AsyncClient, db: Pool
) -> None:
    user = await signup(http)
    event = {
        "id": f"evt_test_{uuid.uuid4().hex}",
        "object": "event",
        "type": payments.CHARGE_REFUNDED,
        "created": int(time.time()),
        "data": {
            "object": {
                "id": "ch_test_other",
                "object": "charge",
                "amount": 900,
                "amount_refunded": 900,
                "payment_intent": "pi_test_someone_elses",
            }
        },
    }
    assert (await post_signed(http, event)).status_code == 200
    assert await user.balance() == SIGNUP_TOKENS
    await assert_ledger_consistent(db, [user])


async def test_a_deleted_accounts_paid_checkout_is_refunded_at_stripe(
    http: httpx.AsyncClient, db: Pool, stand_in: httpx.AsyncClient
) -> None:
    user = await signup(http)
    session_id = await open_session(user)
    gone = await http.request(
        "DELETE", "/v1/me", json={"password": "correct horse"}, headers=user.headers
    )
    assert gone.status_code == 204, gone.text
    assert (await stand_in.post(f"/pay/{session_id}")).status_code == 303
    intent = (await stand_in.get(f"/v1/checkout/sessions/{session_id}")).json()["payment_intent"]

    async def refunded() -> bool:
        found = (await stand_in.get("/_local/refunds")).json()
        return any(r["payment_intent"] == intent for r in found)

    await eventually(refunded)
    await delivered(stand_in, payments.CHARGE_REFUNDED, intent)
    refunds = [r for r in (await stand_in.get("/_local/refunds")).json()]
    assert [r["amount"] for r in refunds if r["payment_intent"] == intent] == [PACK_PRICE]
    async with db.connection() as conn:
        cur = await conn.execute(
            "SELECT returned_refund, status FROM checkout_sessions WHERE id = %s", (session_id,)
        )
        row = await cur.fetchone()
        assert row is not None and row["returned_refund"] is not None
        cur = await conn.execute(
            "SELECT count(*) AS n FROM ledger_entries WHERE payment_id = %s", (session_id,)
        )
        counted = await cur.fetchone()
        assert counted is not None and counted["n"] == 0
