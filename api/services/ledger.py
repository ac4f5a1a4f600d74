"""A user's ledger, page by page: their entries newest first, as they may see them (no
idempotency keys: those are ours). The SQL is billing/ledger.py's."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from billing import ledger
from infra.database.records import Conn

MAX_PAGE = 100
DEFAULT_PAGE = 50

# What a user reads for each kind of entry. A refund's or charge's stored reason is ours
# (what broke, where: error text that may name provider jobs or URLs), so it is never
# shown; only an owner's grant shows the reason the owner wrote for the user.
DESCRIPTIONS = {
    "purchase": "Tokens bought",
    "signup_grant": "Welcome tokens",
    "grant": "Tokens from BitBuddies",
    "charge": "A BitBuddy",
    "refund": "Refund: that BitBuddy was not made",
    "reversal": "Taken back: a payment was refunded or disputed",
    "reinstatement": "Given back: a disputed payment stands",
    "debt": "Settles tokens owed for a refunded or disputed payment",
}


@dataclass(frozen=True)
class StatementEntry:
    id: int
    kind: str  # ledger.statement_kind: purchase, signup_grant, admin_grant, charge, ...
    delta: int
    created_at: datetime
    generation_id: UUID | None
    reason: str | None
    payment_id: str | None = None


@dataclass(frozen=True)
class StatementPage:
    entries: list[StatementEntry]
    next_before: int | None  # pass as ``before`` for the next page; None on the last


async def statement(
    conn: Conn, user_id: UUID, *, before: int | None = None, limit: int = DEFAULT_PAGE
) -> StatementPage:
    """Up to ``limit`` of the user's entries with an id below ``before``, newest first,
    and where the next page starts (None when there is none)."""
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be 1 to {MAX_PAGE}")
    found = await ledger.entries_for_user(conn, user_id, before=before, limit=limit + 1)
    page = found[:limit]
    return StatementPage(
        entries=[
            StatementEntry(
                id=e.id,
                kind=ledger.statement_kind(e),
                delta=e.delta,
                created_at=e.created_at,
                generation_id=e.generation_id,
                reason=_reason(ledger.statement_kind(e), e.reason),
                payment_id=e.payment_id,
            )
            for e in page
        ],
        next_before=page[-1].id if len(found) > limit else None,
    )


def _reason(kind: str, stored: str | None) -> str | None:
    if kind == "admin_grant":
        return stored
    return DESCRIPTIONS.get(kind)
