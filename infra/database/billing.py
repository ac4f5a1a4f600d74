"""Every SQL query about token purchases (the ``checkout_sessions`` and ``stripe_events``
tables, migration 0017; the rules are in api/services/billing.py). Functions take a
connection so callers own the transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from uuid import UUID

from infra.database.records import Conn

CheckoutStatus = Literal["open", "pending", "paid", "failed", "expired"]

_SELECT = (
    "SELECT id, user_id, pack, tokens, amount, currency, status, created_at, updated_at"
    " FROM checkout_sessions WHERE id = %s"
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
