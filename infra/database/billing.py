"""Every SQL query about token purchases (the ``checkout_sessions`` and ``stripe_events``
tables, migration 0017, and ``payment_disputes``, migration 0018; the rules are in
api/services/billing.py and billing/payments.py). Functions take a connection so callers
own the transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from uuid import UUID

from infra.database.records import Conn

CheckoutStatus = Literal["open", "pending", "paid", "failed", "expired"]

_SELECT = (
    "SELECT id, user_id, pack, tokens, amount, currency, status, created_at, updated_at,"
    " payment_intent, amount_refunded, returned_refund FROM checkout_sessions WHERE id = %s"
)


@dataclass(frozen=True)
class CheckoutSession:
    id: str
    user_id: UUID | None  # None once the account was deleted
    pack: str
    tokens: int
    amount: int
    currency: str
    status: CheckoutStatus
    created_at: datetime
    updated_at: datetime
    payment_intent: str | None = None  # Stripe's, once an event told us
    amount_refunded: int = 0  # money given back at Stripe so far
    returned_refund: str | None = None  # a deleted account's payment, refunded in full


async def record_checkout(
    conn: Conn,
    session_id: str,
    user_id: UUID,
    *,
    pack: str,
    tokens: int,
    amount: int,
    currency: str,
) -> None:
    """Record a session we created; a repeat (the same Idempotency-Key gave back the same
    session) keeps the first row."""
    await conn.execute(
        "INSERT INTO checkout_sessions (id, user_id, pack, tokens, amount, currency)"
        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
        (session_id, user_id, pack, tokens, amount, currency),
    )


async def checkout(conn: Conn, session_id: str, *, lock: bool = False) -> CheckoutSession | None:
    """The session's row; ``lock`` holds it (FOR UPDATE) until the transaction ends, so
    two events about one session are applied one after the other."""
    cur = await conn.execute(_SELECT + " FOR UPDATE" if lock else _SELECT, (session_id,))
    row = await cur.fetchone()
    return CheckoutSession(**row) if row else None


async def set_checkout_status(conn: Conn, session_id: str, status: CheckoutStatus) -> None:
    await conn.execute(
        "UPDATE checkout_sessions SET status = %s, updated_at = now() WHERE id = %s",
        (status, session_id),
    )


async def record_event(conn: Conn, event_id: str, event_type: str, session_id: str | None) -> bool:
    """Put a Stripe event in the inbox: True if this is its first delivery, False for a
    repeat. A concurrent repeat waits on the first one's row and sees it once that
    commits (or takes its place if that rolls back)."""
    cur = await conn.execute(
        "INSERT INTO stripe_events (id, type, session_id) VALUES (%s, %s, %s)"
        " ON CONFLICT (id) DO NOTHING RETURNING id",
        (event_id, event_type, session_id),
    )
    return await cur.fetchone() is not None


async def session_of_payment(conn: Conn, payment_intent: str) -> str | None:
    """The id of our session paid by this PaymentIntent, if an event told us so."""
    cur = await conn.execute(
        "SELECT id FROM checkout_sessions WHERE payment_intent = %s", (payment_intent,)
    )
    row = await cur.fetchone()
    return str(row["id"]) if row else None


async def set_payment_intent(conn: Conn, session_id: str, payment_intent: str) -> None:
    """Remember the PaymentIntent that paid a session (refunds and disputes name it)."""
    await conn.execute(
        "UPDATE checkout_sessions SET payment_intent = %s WHERE id = %s AND payment_intent IS NULL",
        (payment_intent, session_id),
    )


async def raise_amount_refunded(conn: Conn, session_id: str, amount_refunded: int) -> None:
    """Stripe's cumulative refunded amount: an older event (a smaller figure) never
    lowers it."""
    await conn.execute(
        "UPDATE checkout_sessions SET amount_refunded = greatest(amount_refunded, %s),"
        " updated_at = now() WHERE id = %s",
        (amount_refunded, session_id),
    )


async def set_returned_refund(conn: Conn, session_id: str, refund_id: str) -> None:
    await conn.execute(
        "UPDATE checkout_sessions SET returned_refund = %s, updated_at = now() WHERE id = %s",
        (refund_id, session_id),
    )


async def record_dispute(
    conn: Conn, dispute_id: str, session_id: str, *, amount: int, status: str, closed: bool
) -> None:
    """Record a dispute or move it on; a closed one stays as it closed."""
    await conn.execute(
        "INSERT INTO payment_disputes (id, session_id, amount, status, closed)"
        " VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (id) DO UPDATE SET amount = EXCLUDED.amount, status = EXCLUDED.status,"
        " closed = EXCLUDED.closed, updated_at = now() WHERE NOT payment_disputes.closed",
        (dispute_id, session_id, amount, status, closed),
    )


async def disputed_amount(conn: Conn, session_id: str, *, not_held: tuple[str, ...]) -> int:
    """The money of a session held by its disputes: all but those whose status is in
    ``not_held``."""
    cur = await conn.execute(
        "SELECT coalesce(sum(amount), 0) AS held FROM payment_disputes"
        " WHERE session_id = %s AND NOT (status = ANY(%s))",
        (session_id, list(not_held)),
    )
    row = await cur.fetchone()
    return int(row["held"]) if row else 0
