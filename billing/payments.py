"""Stripe, as billing sees it: a Checkout Session for a token pack, and the check of a
webhook's signature. Only this module talks to the ``stripe`` library.

Facts this relies on (stripe 16.1.0):
- ``StripeClient(key, base_addresses={"api": url})`` sends every API call to ``url``:
  how local mode reaches our stand-in (infra/stripe_local/) instead of api.stripe.com.
- A request's ``idempotency_key`` makes Stripe answer a repeat with the first answer
  (the same session), and refuse the key with other parameters (``IdempotencyError``).
- ``stripe.Webhook.construct_event(payload, sig_header, secret)`` refuses a body that is
  not the one signed, a signature made with another secret, and a timestamp more than
  300 s old (``SignatureVerificationError``); it must see the raw body.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import stripe

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
