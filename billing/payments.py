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
  ``has_more``.
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
                found.append(PaidSession(session.id, datetime.fromtimestamp(session.created, UTC)))
        if not page.has_more or not page.data:
            break
        params["starting_after"] = page.data[-1].id
    else:
        log.warning("listed %d pages of paid sessions and stopped; more remain", max_pages)
    return found


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
    conn: Conn, session_id: str, event_type: str, payment_status: object
) -> CheckoutMove | None:
    """Apply an event about a session we recorded, in the caller's transaction: lock its
    row, move its status forward, and when that is paid, credit its pack as a ledger
    ``purchase`` under ``ledger.purchase_key`` (so whoever credits first, the webhook or
    the reconciliation, the other finds the entry and moves nothing). None for a session
    we never recorded. A paid session of a deleted account credits nothing and keeps its
    status (``unowned``)."""
    row = await repo.checkout(conn, session_id, lock=True)
    if row is None:
        return None
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
        )
    if target != row.status:
        await repo.set_checkout_status(conn, row.id, target)
    return CheckoutMove(row, target, credited=target == "paid")
