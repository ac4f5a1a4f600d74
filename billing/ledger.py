"""The token ledger: every balance change is an append-only entry with a unique key.

All functions take an open connection and run inside the caller's transaction, so a
charge can commit atomically with the generation it pays for. Each is idempotent by its
key: calling it again, after a crash or a retry, returns the entry written the first
time and moves no money.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from psycopg import AsyncConnection

EntryKind = Literal["grant", "purchase", "charge", "refund"]


class LedgerError(Exception):
    """A ledger rule was broken."""


class InsufficientTokens(LedgerError):
    """The balance cannot cover the charge."""


class NothingToRefund(LedgerError):
    """No charge is recorded under that key."""


class KeyReused(LedgerError):
    """An idempotency key already names a different kind of entry or another user."""


@dataclass(frozen=True)
class LedgerEntry:
    id: int
    user_id: UUID | None  # None once the account was deleted (see ``erase_account``)
    delta: int
    kind: EntryKind
    idempotency_key: str
    generation_id: UUID | None
    refund_of: int | None
    reason: str | None
    created_at: datetime
    erased_account: UUID | None = None  # a deleted account's entries: its random stand-in


Conn = AsyncConnection[dict[str, Any]]

_COLUMNS = (
    "id, user_id, delta, kind, idempotency_key, generation_id, refund_of, reason, created_at,"
    " erased_account"
)


class _Conflict(Exception):
    """Raised inside a savepoint to undo a balance change that lost a race."""


async def _by_key(conn: Conn, key: str) -> LedgerEntry | None:
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM ledger_entries WHERE idempotency_key = %s", (key,)
    )
    row = await cur.fetchone()
    return LedgerEntry(**row) if row else None


def _same(entry: LedgerEntry, user_id: UUID, kind: EntryKind) -> LedgerEntry:
    if entry.user_id != user_id or entry.kind != kind:
        raise KeyReused(f"idempotency key {entry.idempotency_key!r} names another entry")
    return entry


async def _append(
    conn: Conn,
    *,
    user_id: UUID,
    delta: int,
    kind: EntryKind,
    key: str,
    generation_id: UUID | None = None,
    refund_of: int | None = None,
    reason: str | None = None,
) -> LedgerEntry | None:
    """Move the balance and write the entry in one savepoint; None if the key (or the
    refunded charge) was taken by a concurrent transaction, with the balance untouched."""
    try:
        async with conn.transaction():
            cur = await conn.execute(
                "UPDATE balances SET tokens = tokens + %s WHERE user_id = %s AND tokens + %s >= 0"
                " RETURNING tokens",
                (delta, user_id, delta),
            )
            if await cur.fetchone() is None:
                raise InsufficientTokens(f"balance cannot cover {-delta} token(s)")
            cur = await conn.execute(
                f"INSERT INTO ledger_entries (user_id, delta, kind, idempotency_key,"
                f" generation_id, refund_of, reason) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                f" ON CONFLICT DO NOTHING RETURNING {_COLUMNS}",
                (user_id, delta, kind, key, generation_id, refund_of, reason),
            )
            row = await cur.fetchone()
            if row is None:
                raise _Conflict
            return LedgerEntry(**row)
    except _Conflict:
        return None


async def open_account(conn: Conn, user_id: UUID) -> None:
    await conn.execute(
        "INSERT INTO balances (user_id, tokens) VALUES (%s, 0) ON CONFLICT DO NOTHING", (user_id,)
    )


async def grant(
    conn: Conn,
    user_id: UUID,
    tokens: int,
    *,
    idempotency_key: str,
    kind: EntryKind = "grant",
    reason: str | None = None,
) -> LedgerEntry:
    """Add tokens (a sign-up gift or a purchase)."""
    if tokens <= 0:
        raise LedgerError("a grant adds at least one token")
    if existing := await _by_key(conn, idempotency_key):
        return _same(existing, user_id, kind)
    entry = await _append(
        conn, user_id=user_id, delta=tokens, kind=kind, key=idempotency_key, reason=reason
    )
    if entry is None:
        entry = await _by_key(conn, idempotency_key)
        assert entry is not None
    return _same(entry, user_id, kind)


async def grant_once(
    conn: Conn, user_id: UUID, tokens: int, *, idempotency_key: str, reason: str | None = None
) -> bool:
    """``grant``, saying whether this call made the entry (False: it was made before)."""
    if tokens <= 0:
        raise LedgerError("a grant adds at least one token")
    if existing := await _by_key(conn, idempotency_key):
        _same(existing, user_id, "grant")
        return False
    entry = await _append(
        conn, user_id=user_id, delta=tokens, kind="grant", key=idempotency_key, reason=reason
    )
    if entry is None:  # a concurrent transaction made it first
        found = await _by_key(conn, idempotency_key)
        assert found is not None
        _same(found, user_id, "grant")
        return False
    return True


async def charge(
    conn: Conn, user_id: UUID, *, idempotency_key: str, generation_id: UUID, tokens: int = 1
) -> LedgerEntry:
    """Spend tokens; InsufficientTokens when the balance cannot cover them."""
    if existing := await _by_key(conn, idempotency_key):
        return _same(existing, user_id, "charge")
    entry = await _append(
        conn,
        user_id=user_id,
        delta=-tokens,
        kind="charge",
        key=idempotency_key,
        generation_id=generation_id,
    )
    if entry is None:
        entry = await _by_key(conn, idempotency_key)
        assert entry is not None
    return _same(entry, user_id, "charge")


async def refund(conn: Conn, *, charge_key: str, idempotency_key: str, reason: str) -> LedgerEntry:
    """Give back a charge. A charge is refunded at most once, whatever key the refund
    arrives with; a repeat returns the refund already made."""
    if existing := await _by_key(conn, idempotency_key):
        if existing.kind != "refund":
            raise KeyReused(f"idempotency key {idempotency_key!r} names a {existing.kind}")
        return existing
    charged = await _by_key(conn, charge_key)
    if charged is None or charged.kind != "charge" or charged.user_id is None:
        raise NothingToRefund(f"no charge under {charge_key!r}")
    if prior := await refund_of(conn, charged.id):
        return prior
    entry = await _append(
        conn,
        user_id=charged.user_id,
        delta=-charged.delta,
        kind="refund",
        key=idempotency_key,
        generation_id=charged.generation_id,
        refund_of=charged.id,
        reason=reason,
    )
    if entry is None:
        entry = await _by_key(conn, idempotency_key) or await refund_of(conn, charged.id)
        assert entry is not None
    return entry


async def refund_of(conn: Conn, charge_id: int) -> LedgerEntry | None:
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM ledger_entries WHERE refund_of = %s", (charge_id,)
    )
    row = await cur.fetchone()
    return LedgerEntry(**row) if row else None


async def balance(conn: Conn, user_id: UUID) -> int:
    cur = await conn.execute("SELECT tokens FROM balances WHERE user_id = %s", (user_id,))
    row = await cur.fetchone()
    return int(row["tokens"]) if row else 0


async def entries_for_generation(conn: Conn, generation_id: UUID) -> list[LedgerEntry]:
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM ledger_entries WHERE generation_id = %s ORDER BY id",
        (generation_id,),
    )
    return [LedgerEntry(**row) for row in await cur.fetchall()]


async def erase_account(conn: Conn, user_id: UUID, erased_account: UUID) -> int:
    """Remove a deleted account's identity from its entries, which stay: the user, the
    generation, the key and the reason go (keys and reasons name the user or their
    generations); the amount, kind, refund link and time stay, under ``erased_account``,
    a random id the caller makes and keeps nowhere. The one update the ledger's trigger
    allows (migration 0013). Returns how many entries were erased."""
    cur = await conn.execute(
        "UPDATE ledger_entries SET user_id = NULL, erased_account = %s, generation_id = NULL,"
        " reason = NULL, idempotency_key = 'erased:' || id WHERE user_id = %s",
        (erased_account, user_id),
    )
    return cur.rowcount


async def erased_entries(conn: Conn, erased_account: UUID) -> list[LedgerEntry]:
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM ledger_entries WHERE erased_account = %s ORDER BY id",
        (erased_account,),
    )
    return [LedgerEntry(**row) for row in await cur.fetchall()]


# --- the keys entries are written under: every format is made here ----------------


def charge_key(generation_id: UUID) -> str:
    """The one key a generation's charge is written under."""
    return f"generation:{generation_id}:charge"


def refund_key(generation_id: UUID, settled_by: str) -> str:
    """The key a generation's refund is written under. ``settled_by`` names who settled
    it: the workflow (a ``workflow.uuid4()`` of its own, the same on every retry of its
    settle activity), ``sweep`` or ``start``. A retry by the same settler finds its
    entry; a second settler finds the charge already refunded (a charge is refunded at
    most once, whatever the key), so no pair of them can refund twice."""
    return f"generation:{generation_id}:refund:{settled_by}"


def signup_grant_key(user_id: UUID) -> str:
    """The one key a new account's free tokens are granted under."""
    return f"signup:{user_id}"
