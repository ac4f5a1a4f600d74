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
from infra import alerts
from infra.database import billing as repo
from infra.database.records import Conn
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
        event_type: str = event["type"]
        obj = _object_of(event)
        if event_type == payments.CHARGE_REFUNDED or event_type.startswith(payments.DISPUTE_EVENTS):
            return await self._payment_event(event, obj)
        return await self._session_event(event, obj)

    async def _session_event(self, event: dict[str, Any], session: dict[str, Any]) -> bool:
        event_id: str = event["id"]
        event_type: str = event["type"]
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
                conn,
                session_id,
                event_type,
                session.get("payment_status"),
                session.get("payment_intent"),
            )
            if move is None:
                log.warning("Stripe event %s for an unknown session", event_type, extra=context)
                return True
            if move.unowned:
                await self._return_unowned(conn, move, context)
                return True
        log.info(
            "Stripe event %s: checkout %s -> %s",
            event_type,
            move.session.status,
            move.status,
            extra={**context, "user_id": move.session.user_id},
        )
        return True

    async def _return_unowned(
        self, conn: Conn, move: payments.CheckoutMove, context: dict[str, Any]
    ) -> None:
        """A deleted account's checkout was paid: nobody to credit, so the money goes
        back. Stripe unreachable rolls the event back (a 503), so it is delivered again."""
        try:
            refund_id = await payments.return_unowned(self.client, conn, move)
        except payments.PaymentProviderError as err:
            log.warning(
                "a deleted account's paid checkout cannot be refunded yet: %s", err, extra=context
            )
            raise PaymentsUnavailable(
                "The payment provider cannot be reached; try again.", retry_after=30
            ) from err
        log.warning(
            "a deleted account's checkout was paid: refunded in full (%s)", refund_id, extra=context
        )

    async def _payment_event(self, event: dict[str, Any], obj: dict[str, Any]) -> bool:
        """A refund (``charge.refunded``) or a dispute (``charge.dispute.*``) of one of
        our payments: the tokens it bought are taken back in proportion (or given back,
        a dispute won). The event names only the PaymentIntent; a payment whose
        checkout's own event has not come yet is looked up at Stripe (and credited first:
        the same as its completion would)."""
        event_id: str = event["id"]
        event_type: str = event["type"]
        payment_intent = obj.get("payment_intent")
        context: dict[str, Any] = {"stripe_event_id": event_id, "payment_intent": payment_intent}
        found: tuple[str, str, str | None] | None = None
        session_id: str | None = None
        if isinstance(payment_intent, str):
            async with self.db.connection() as conn:
                session_id = await repo.session_of_payment(conn, payment_intent)
            if session_id is None and self.client is not None:
                try:
                    found = await payments.session_of_payment_intent(self.client, payment_intent)
                except payments.PaymentProviderError as err:
                    raise PaymentsUnavailable(
                        "The payment provider cannot be reached; try again.", retry_after=30
                    ) from err
                session_id = found[0] if found else None
        context["checkout_session_id"] = session_id
        async with self.db.connection() as conn, conn.transaction():
            if not await repo.record_event(conn, event_id, event_type, session_id):
                log.info("Stripe event %s repeated; already acted on", event_type, extra=context)
                return False
            if session_id is None:
                log.info(
                    "Stripe event %s is not about a checkout of ours", event_type, extra=context
                )
                return True
            if found is not None:
                _, status, payment_status = found
                move = await payments.apply_checkout_event(
                    conn,
                    session_id,
                    payments.SESSION_COMPLETED
                    if status == "complete"
                    else payments.SESSION_EXPIRED,
                    payment_status,
                    payment_intent,
                )
                if move is None:
                    log.info(
                        "Stripe event %s: session %s is not ours",
                        event_type,
                        session_id,
                        extra=context,
                    )
                    return True
            refunded = (
                obj.get("amount_refunded") if event_type == payments.CHARGE_REFUNDED else None
            )
            change = await payments.apply_payment_change(
                conn,
                session_id,
                amount_refunded=refunded if isinstance(refunded, int) else None,
                dispute=obj if event_type.startswith(payments.DISPUTE_EVENTS) else None,
                dispute_closed=event_type == payments.DISPUTE_CLOSED,
            )
            if change is None:
                return True
        user_id = change.session.user_id
        moved = change.adjustment
        log.warning(
            "Stripe event %s: %d of %d token(s) now taken back (%d taken, %d owed, %d returned,"
            " %d forgiven)",
            event_type,
            change.target,
            change.session.tokens,
            moved.taken,
            moved.owed,
            moved.returned,
            moved.forgiven,
            extra={**context, "user_id": user_id},
        )
        if event_type.startswith(payments.DISPUTE_EVENTS):
            await self._tell_owner(event, obj, change)
        return True

    async def _tell_owner(
        self, event: dict[str, Any], dispute: dict[str, Any], change: payments.PaymentChange
    ) -> None:
        """A dispute opened or closed: the owner answers it in Stripe's dashboard."""
        if event["type"] not in ("charge.dispute.created", payments.DISPUTE_CLOSED):
            return
        status = str(dispute.get("status") or "-")
        moved = change.adjustment
        detail = (
            f"dispute {dispute.get('id')} {status}, {dispute.get('amount')}"
            f" {change.session.currency}; {change.target} of {change.session.tokens} token(s)"
            f" taken back ({moved.taken} unspent, {moved.owed} now owed, {moved.returned}"
            " returned)"
        )
        alert = alerts.payment_alert(
            self.settings,
            source_key=f"stripe:{event['id']}",
            title="A payment was disputed"
            if event["type"] == "charge.dispute.created"
            else f"A dispute closed: {status}",
            user_id=str(change.session.user_id) if change.session.user_id else None,
            payment_intent=change.session.payment_intent or dispute.get("payment_intent"),
            error_class=event["type"].removeprefix("charge."),
            detail=detail,
        )
        try:
            await alerts.raise_alert(self.db, self.settings, alert)
        except Exception:  # recorded, not delivered: the digest delivers it
            log.warning("the dispute's alert is recorded but not delivered yet", exc_info=True)


def _object_of(event: dict[str, Any]) -> dict[str, Any]:
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    return obj if isinstance(obj, dict) else {}
