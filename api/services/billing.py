"""Buying tokens with Stripe Checkout: the packs for sale, a checkout for one of them,
and the webhook that credits a paid one, exactly once.

Fulfilment comes only from Stripe's signed webhooks, never from the success page the
buyer is sent back to. Stripe delivers each event at least once, in any order, and a
retried one can carry a new event id; so:

- each event is recorded by its id in the ``stripe_events`` inbox, in the same
  transaction as what it does: a repeat of an id changes nothing;
- a credit is a ledger entry of kind ``purchase`` under the session's key
  (``ledger.purchase_key``): another event about the same session finds it;
- the session's row is locked while an event is applied, and its status only moves
  forward: open → pending (completed, payment still clearing) → paid | failed, and paid
  is final (it holds the credit), so events out of order end in the same state.

Applying an event is ``payments.apply_checkout_event``, the one crediting path the
billing reconciliation (billing/reconcile.py) takes too for a paid session whose webhook
never came.

Anything that fails rolls the whole transaction back (the inbox row too) and answers an
error, so Stripe delivers again.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any
from uuid import UUID

import stripe
from psycopg_pool import AsyncConnectionPool

from api.services.errors import KeyReused, PaymentsUnavailable, UnknownPack, WebhookRefused
from billing import payments
from infra.database import billing as repo
from infra.settings import Settings, TokenPack

log = logging.getLogger("bitbuddies.billing")

MAX_IDEMPOTENCY_KEY = 255  # as POST /v1/generations
SIGNATURE_HEADER = "stripe-signature"


class BillingService:
    def __init__(
        self, db: AsyncConnectionPool[Any], settings: Settings, client: stripe.StripeClient | None
    ) -> None:
        self.db = db
        self.settings = settings
        self.client = client
        self._packs = {pack.id: pack for pack in settings.token_packs}

    def packs(self) -> list[TokenPack]:
        return list(self._packs.values())

    async def checkout(self, user_id: UUID, pack_id: str, idempotency_key: str | None) -> str:
        """A Checkout Session for the pack, recorded as open; its URL. The same
        Idempotency-Key gives back the same session."""
        pack = self._packs.get(pack_id)
        if pack is None:
            raise UnknownPack(f"There is no pack {pack_id!r} for sale.", field="pack")
        if idempotency_key is not None and not (
            0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY and idempotency_key.isprintable()
        ):
            raise UnknownPack("Idempotency-Key must be 1 to 255 printable characters.")
        if self.client is None:
            raise PaymentsUnavailable("Buying tokens is not available right now.")
        # Scoped to the user, so two people's keys never name one Stripe request; a
        # request without a key gets one of its own.
        key = f"checkout:{user_id}:{idempotency_key or uuid.uuid4()}"
        base = self.settings.public_url.rstrip("/")
        try:
            created = await payments.create_checkout(
                self.client,
                pack,
                user_id=user_id,
                # {CHECKOUT_SESSION_ID} is filled in by Stripe; the page only says thanks:
                # the tokens come with the webhook.
                success_url=f"{base}/account?purchase=complete&session_id={{CHECKOUT_SESSION_ID}}",
                cancel_url=f"{base}/account?purchase=cancelled",
                idempotency_key=key,
            )
        except payments.IdempotencyConflict as err:
            raise KeyReused(
                "This Idempotency-Key was already used for another pack; use a new key."
            ) from err
        except payments.PaymentProviderError as err:
            raise PaymentsUnavailable(
                "The payment provider cannot be reached; try again.", retry_after=5
            ) from err
        async with self.db.connection() as conn:
            await repo.record_checkout(
                conn,
                created.id,
                user_id,
                pack=pack.id,
                tokens=pack.tokens,
                amount=pack.price,
                currency=pack.currency,
            )
        log.info(
            "checkout session %s opened for pack %s",
            created.id,
            pack.id,
            extra={"user_id": str(user_id)},
        )
        return created.url

    async def webhook(self, headers: Mapping[str, str], body: bytes) -> bool:
        """Act on one Stripe delivery: True when it was new, False for a repeat of an
        event id. WebhookRefused (nothing done) when it is not signed with our secret
        within the last 300 s."""
        secret = self.settings.stripe_webhook_secret
        if secret is None:
            log.error("a Stripe webhook came, but BITBUDDIES_STRIPE_WEBHOOK_SECRET is not set")
            raise WebhookRefused("Webhook refused: no webhook secret is configured.")
        try:
            event = payments.verify_event(
                body, headers.get(SIGNATURE_HEADER), secret.get_secret_value()
            )
        except payments.BadSignature as err:
            log.warning("refused a Stripe webhook: %s", err)
            raise WebhookRefused("Webhook refused: the Stripe signature does not verify.") from err
        event_id: str = event["id"]
        event_type: str = event["type"]
        session = _session_of(event)
        session_id = session.get("id") if isinstance(session.get("id"), str) else None
        context = {"stripe_event_id": event_id, "checkout_session_id": session_id}
        async with self.db.connection() as conn, conn.transaction():
            if not await repo.record_event(conn, event_id, event_type, session_id):
                log.info("Stripe event %s repeated; already acted on", event_type, extra=context)
                return False
            if session_id is None or not event_type.startswith("checkout.session."):
                log.info("Stripe event %s recorded; nothing to do", event_type, extra=context)
                return True
            move = await payments.apply_checkout_event(
                conn, session_id, event_type, session.get("payment_status")
            )
            if move is None:
                log.warning("Stripe event %s for an unknown session", event_type, extra=context)
                return True
            if move.unowned:
                log.error("a deleted account's checkout was paid: refund it", extra=context)
                return True
        log.info(
            "Stripe event %s: checkout %s -> %s",
            event_type,
            move.session.status,
            move.status,
            extra=context,
        )
        return True


def _session_of(event: dict[str, Any]) -> dict[str, Any]:
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    return obj if isinstance(obj, dict) else {}
