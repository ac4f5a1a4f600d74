"""Stripe, as billing sees it: a Checkout Session for a token pack, the check of a
webhook's signature, the list of recent paid sessions (for the reconciliation,
billing/reconcile.py), and how an event about a session moves our record of it and credits
a paid one (``apply_checkout_event``: the webhook and the reconciliation credit through it,
under one ledger key). Only this module talks to the ``stripe`` library.

Facts this relies on (stripe 16.1.0):
- ``StripeClient(key, base_addresses={"api": url})`` sends every API call to ``url``:
  how local mode reaches our stand-in (infra/stripe_local/) instead of api.stripe.com.
- A request's ``idempotency_key`` makes Stripe answer a repeat with the first answer
  (the same session), and refuse the key with other parameters (``IdempotencyError``).
- ``stripe.Webhook.construct_event(payload, sig_header, secret)`` refuses a body that is
  not the one signed, a signature made with another secret, and a timestamp more than
  300 s old (``SignatureVerificationError``); it must see the raw body.
- ``checkout.sessions.list`` takes ``status``, ``created[gte]``, ``limit`` (at most 100)
  and ``starting_after`` (the last id of the previous page), newest first, with
  ``has_more``; and ``payment_intent`` (the session that PaymentIntent paid).
- A Checkout Session in ``mode=payment`` names its PaymentIntent (``payment_intent``) once
  completed. A refund or a dispute names only the charge and its PaymentIntent:
  ``charge.refunded`` carries the Charge (``amount``, ``amount_refunded``, cumulative,
  ``payment_intent``), ``charge.dispute.*`` the Dispute (``id``, ``amount``, ``status``,
  ``payment_intent``). A dispute's money is withdrawn unless it is an inquiry
  (``warning_*``) and comes back when it is ``won``.
- ``refunds.create(payment_intent=...)`` refunds the whole payment when no amount is
  given; an idempotency key makes a repeat answer the same Refund.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import stripe

from billing import ledger
from infra.database import billing as repo
from infra.database.billing import CheckoutSession, CheckoutStatus
from infra.database.records import Conn
from infra.settings import Settings, TokenPack

log = logging.getLogger("bitbuddies.billing")

# The stand-in takes any key; this one says where it came from in its logs.
LOCAL_API_KEY = "sk_test_bitbuddies_local"
# Stripe's own tolerance, spelled out: older signatures are refused as replays.
SIGNATURE_TOLERANCE_SECONDS = 300

# The events that move a purchase (Stripe's Checkout fulfilment guide): fulfil only on
# these, never on the success page the buyer returns to.
SESSION_COMPLETED = "checkout.session.completed"  # paid unless payment_status says not yet
ASYNC_PAYMENT_SUCCEEDED = "checkout.session.async_payment_succeeded"
ASYNC_PAYMENT_FAILED = "checkout.session.async_payment_failed"
SESSION_EXPIRED = "checkout.session.expired"
# The events that give money back (a refund made in Stripe's dashboard or by us) or hold
# it (a dispute): each takes back the tokens that money bought.
CHARGE_REFUNDED = "charge.refunded"
DISPUTE_EVENTS = "charge.dispute."  # created, updated, funds_withdrawn, closed, ...
DISPUTE_CLOSED = "charge.dispute.closed"
# A dispute in these states holds no money: an inquiry (warning_*) withdraws nothing, and
# a dispute won (or prevented) gives it back. Every other state (needs_response,
# under_review, lost) has the money withdrawn.
DISPUTE_NOT_HELD = (
    "won",
    "prevented",
    "warning_needs_response",
    "warning_under_review",
    "warning_closed",
)
DISPUTE_FINAL = ("won", "lost", "warning_closed", "prevented")


class PaymentProviderError(Exception):
    """Stripe could not be reached or refused the call for a reason of its own."""


class IdempotencyConflict(Exception):
    """The idempotency key was used before with other parameters."""


class BadSignature(Exception):
    """A webhook that Stripe did not sign with our secret, or signed too long ago."""


@dataclass(frozen=True)
class CheckoutCreated:
    id: str
    url: str


def stripe_client(settings: Settings) -> stripe.StripeClient | None:
    """The Stripe client, or None when payments are not configured (production without
    STRIPE_SECRET_KEY). Without a key in local mode it talks to the stand-in."""
    http = stripe.HTTPXClient()  # async calls over httpx (create_async)
    if settings.stripe_secret_key is not None:
        return stripe.StripeClient(
            settings.stripe_secret_key.get_secret_value(), http_client=http, max_network_retries=2
        )
    if not settings.uses_local_stripe:
        log.error("STRIPE_SECRET_KEY is not set: token purchases are switched off")
        return None
    log.warning(
        "STRIPE_SECRET_KEY is not set: purchases go to the local Stripe stand-in at %s,"
        " and no real money moves",
        settings.stripe_api_url,
    )
    return stripe.StripeClient(
        LOCAL_API_KEY,
        base_addresses={"api": settings.stripe_api_url},
        http_client=http,
        max_network_retries=2,
    )


async def create_checkout(
    client: stripe.StripeClient,
    pack: TokenPack,
    *,
    user_id: UUID,
    success_url: str,
    cancel_url: str,
    idempotency_key: str,
) -> CheckoutCreated:
    """A Checkout Session (mode=payment) for one pack, for this user."""
    line_item: dict[str, Any] = (
        {"price": pack.stripe_price_id, "quantity": 1}
        if pack.stripe_price_id
        else {
            "price_data": {
                "currency": pack.currency,
                "unit_amount": pack.price,
                "product_data": {"name": pack.name},
            },
            "quantity": 1,
        }
    )
    params: dict[str, Any] = {
        "mode": "payment",
        "line_items": [line_item],
        "client_reference_id": str(user_id),
        "metadata": {"user_id": str(user_id), "pack": pack.id},
        "success_url": success_url,
        "cancel_url": cancel_url,
    }
    try:
        session = await client.v1.checkout.sessions.create_async(
            params,  # type: ignore[arg-type]  # a plain dict of the documented fields
            {"idempotency_key": idempotency_key},
        )
    except stripe.IdempotencyError as err:
        raise IdempotencyConflict(str(err)) from err
    except stripe.StripeError as err:
        log.warning("Stripe refused or failed a checkout: %s", type(err).__name__)
        raise PaymentProviderError(str(err)) from err
    if not session.url:
        raise PaymentProviderError(f"Checkout Session {session.id} came back without a url")
    return CheckoutCreated(id=session.id, url=session.url)


def verify_event(body: bytes, signature: str | None, secret: str) -> dict[str, Any]:
    """The event, as a plain dict, if Stripe signed this very body with ``secret`` within
    the last 300 s; BadSignature otherwise."""
    if not signature:
        raise BadSignature("no Stripe-Signature header")
    try:
        stripe.Webhook.construct_event(
            body, signature, secret, tolerance=SIGNATURE_TOLERANCE_SECONDS
        )
        event = json.loads(body)
    except stripe.SignatureVerificationError as err:
        raise BadSignature(str(err)) from err
    except ValueError as err:  # not JSON (construct_event parses it too)
        raise BadSignature("the body is not a JSON event") from err
    if not isinstance(event, dict) or not isinstance(event.get("id"), str):
        raise BadSignature("the body is not an event")
    if not isinstance(event.get("type"), str):
        raise BadSignature("the event has no type")
    return event


# --- recent paid sessions (the reconciliation) ------------------------------------

LIST_PAGE = 100  # Stripe's largest page


@dataclass(frozen=True)
class PaidSession:
    id: str
    created: datetime
    payment_intent: str | None = None


async def paid_sessions(
    client: stripe.StripeClient, *, created_since: datetime, max_pages: int = 100
) -> list[PaidSession]:
    """Every Checkout Session Stripe says is complete and paid, created at or after
    ``created_since``, newest first (page by page, at most ``max_pages`` pages).
    PaymentProviderError when Stripe cannot be asked."""
    found: list[PaidSession] = []
    params: dict[str, Any] = {
        "status": "complete",
        "created": {"gte": int(created_since.timestamp())},
        "limit": LIST_PAGE,
    }
    for _ in range(max_pages):
        try:
            page = await client.v1.checkout.sessions.list_async(
                params  # type: ignore[arg-type]  # a plain dict of the documented fields
            )
        except stripe.StripeError as err:
            log.warning("Stripe refused or failed a list of sessions: %s", type(err).__name__)
            raise PaymentProviderError(str(err)) from err
        for session in page.data:
            if session.payment_status == "paid":
                created = datetime.fromtimestamp(session.created, UTC)
                intent = session.payment_intent
                found.append(
                    PaidSession(session.id, created, intent if isinstance(intent, str) else None)
                )
        if not page.has_more or not page.data:
            break
        params["starting_after"] = page.data[-1].id
    else:
        log.warning("listed %d pages of paid sessions and stopped; more remain", max_pages)
    return found


async def session_of_payment_intent(
    client: stripe.StripeClient, payment_intent: str
) -> tuple[str, str, str | None] | None:
    """The Checkout Session Stripe says a PaymentIntent paid: (its id, its status, its
    payment_status), or None when no session did (a payment that is not a checkout of
    ours). PaymentProviderError when Stripe cannot be asked."""
    try:
        page = await client.v1.checkout.sessions.list_async(
            {"payment_intent": payment_intent, "limit": 1}
        )
    except stripe.StripeError as err:
        log.warning("Stripe refused or failed a session lookup: %s", type(err).__name__)
        raise PaymentProviderError(str(err)) from err
    if not page.data:
        return None
    session = page.data[0]
    return session.id, str(session.status), session.payment_status


async def refund_payment(
    client: stripe.StripeClient, payment_intent: str, *, idempotency_key: str
) -> str:
    """Give a payment's money back in full at Stripe; the Refund's id. The same key
    gives back the same refund. PaymentProviderError when Stripe cannot be asked."""
    try:
        refund = await client.v1.refunds.create_async(
            {"payment_intent": payment_intent, "reason": "requested_by_customer"},
            {"idempotency_key": idempotency_key},
        )
    except stripe.StripeError as err:
        log.warning("Stripe refused or failed a refund: %s", type(err).__name__)
        raise PaymentProviderError(str(err)) from err
    return refund.id


async def return_unowned(client: stripe.StripeClient | None, conn: Conn, move: CheckoutMove) -> str:
    """Refund at Stripe, in full, a paid session of a deleted account (nobody to credit)
    and record the refund on the session; its id. The key is the session's, so asking
    again (a redelivered event, the reconciliation) refunds once. PaymentProviderError
    when Stripe cannot be asked or the session's PaymentIntent is not known yet."""
    row = await repo.checkout(conn, move.session.id)
    assert row is not None
    if row.returned_refund:
        return row.returned_refund
    if client is None or row.payment_intent is None:
        raise PaymentProviderError(f"cannot refund {row.id} yet: no Stripe or no PaymentIntent")
    refund_id = await refund_payment(
        client, row.payment_intent, idempotency_key=f"return-unowned:{row.id}"
    )
    await repo.set_returned_refund(conn, row.id, refund_id)
    return refund_id


# --- how an event moves a session, and the credit ---------------------------------


@dataclass(frozen=True)
class CheckoutMove:
    """What applying an event to our record of a session did."""

    session: CheckoutSession  # the row as it was before (locked while applied)
    status: CheckoutStatus  # where it is now
    credited: bool  # the session is paid and its purchase entry stands (made now or before)
    unowned: bool = False  # paid, but its account was deleted: nothing credited


def next_status(current: CheckoutStatus, event_type: str, payment_status: object) -> CheckoutStatus:
    """Where an event moves a session. Paid is final (it holds the credit); a session
    that failed or expired becomes paid only if Stripe says the money came."""
    if current == "paid":
        return "paid"
    paid = (event_type == SESSION_COMPLETED and payment_status == "paid") or (
        event_type == ASYNC_PAYMENT_SUCCEEDED
    )
    if paid:
        return "paid"
    if event_type == ASYNC_PAYMENT_FAILED:
        return "failed"
    if event_type == SESSION_COMPLETED and current == "open":
        return "pending"  # completed, payment still clearing: async_payment_* follows
    if event_type == SESSION_EXPIRED and current == "open":
        return "expired"
    return current


async def apply_checkout_event(
    conn: Conn,
    session_id: str,
    event_type: str,
    payment_status: object,
    payment_intent: object = None,
) -> CheckoutMove | None:
    """Apply an event about a session we recorded, in the caller's transaction: lock its
    row, move its status forward, and when that is paid, credit its pack as a ledger
    ``purchase`` under ``ledger.purchase_key`` (so whoever credits first, the webhook or
    the reconciliation, the other finds the entry and moves nothing). None for a session
    we never recorded. A paid session of a deleted account credits nothing and keeps its
    status (``unowned``). The PaymentIntent, when the event names it, is remembered (a
    refund or dispute names only that); a refund or dispute that came before the credit
    takes its share back at once."""
    row = await repo.checkout(conn, session_id, lock=True)
    if row is None:
        return None
    if isinstance(payment_intent, str) and row.payment_intent is None:
        await repo.set_payment_intent(conn, row.id, payment_intent)
    target = next_status(row.status, event_type, payment_status)
    if target == "paid":
        if row.user_id is None:
            return CheckoutMove(row, row.status, credited=False, unowned=True)
        await ledger.grant(
            conn,
            row.user_id,
            row.tokens,
            idempotency_key=ledger.purchase_key(row.id),
            kind="purchase",
            reason=f"Stripe Checkout, pack {row.pack}",
            payment_id=row.id,
        )
    if target != row.status:
        await repo.set_checkout_status(conn, row.id, target)
    if target == "paid" and row.status != "paid":
        await _take_back(conn, row, target)
    return CheckoutMove(row, target, credited=target == "paid")


# --- refunds and disputes -----------------------------------------------------------


@dataclass(frozen=True)
class PaymentChange:
    """What a refund or dispute event did to a session's tokens."""

    session: CheckoutSession  # the row before (locked while applied)
    target: int  # the tokens that should now be taken back, of ``session.tokens``
    adjustment: ledger.PaymentAdjustment


def tokens_to_take_back(tokens: int, amount: int, refunded: int, disputed: int) -> int:
    """The tokens a payment of ``amount`` for ``tokens`` loses when ``refunded`` of it
    went back and ``disputed`` is held by disputes: in proportion, rounded up (a part of
    a token given back is a whole token taken), never more than it bought."""
    gone = max(0, min(amount, refunded + disputed))
    return min(tokens, -(-tokens * gone // amount))


async def apply_payment_change(
    conn: Conn,
    session_id: str,
    *,
    amount_refunded: int | None = None,
    dispute: dict[str, Any] | None = None,
    dispute_closed: bool = False,
) -> PaymentChange | None:
    """Apply a refund (Stripe's cumulative ``amount_refunded`` of the charge) or a
    dispute's new state to a session we recorded, in the caller's transaction, and bring
    the tokens taken back from it to what the money now says (``ledger.adjust_payment``).
    State only moves forward (the refunded amount only grows, a closed dispute stays
    closed), and the take-back is computed from that state, never added per event: the
    same event twice, or events out of order, end the same. None for a session we never
    recorded."""
    row = await repo.checkout(conn, session_id, lock=True)
    if row is None:
        return None
    if amount_refunded is not None:
        await repo.raise_amount_refunded(conn, row.id, amount_refunded)
    if dispute is not None:
        status = str(dispute.get("status") or "needs_response")
        await repo.record_dispute(
            conn,
            str(dispute["id"]),
            row.id,
            amount=int(dispute.get("amount") or row.amount),
            status=status,
            closed=dispute_closed or status in DISPUTE_FINAL,
        )
    target, adjustment = await _take_back(conn, row, row.status)
    return PaymentChange(row, target, adjustment)


async def _take_back(
    conn: Conn, row: CheckoutSession, status: CheckoutStatus
) -> tuple[int, ledger.PaymentAdjustment]:
    """Take back (or give back) what the session's refunds and disputes now say. Only
    a credited session of an account that still exists has tokens to take."""
    if status != "paid" or row.user_id is None:
        return 0, ledger.PaymentAdjustment()
    now = await repo.checkout(conn, row.id)
    assert now is not None
    held = await repo.disputed_amount(conn, row.id, not_held=DISPUTE_NOT_HELD)
    target = tokens_to_take_back(row.tokens, row.amount, now.amount_refunded, held)
    adjustment = await ledger.adjust_payment(
        conn,
        row.user_id,
        row.id,
        target,
        reason=f"Stripe payment {row.id}: {now.amount_refunded} refunded, {held} disputed",
    )
    return target, adjustment
