"""The token ledger: every balance change is an append-only entry with a unique key.

All functions take an open connection and run inside the caller's transaction, so a
charge can commit atomically with the generation it pays for. Each is idempotent by its
key: calling it again, after a crash or a retry, returns the entry written the first
time and moves no money.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
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


# --- the invariant ------------------------------------------------------------------

Rule = Literal[
    "balance_mismatch",  # the stored balance is not the sum of the user's entries
    "negative_balance",  # a stored balance below zero
    "negative_history",  # the entries' running sum (in id order) went below zero
    "wrong_sign",  # a charge that adds, a grant or purchase that takes
    "unowned_entry",  # an entry with both or neither of user and erased account
    "charged_twice",  # more than one charge for one generation
    "foreign_generation",  # an entry naming a generation of another user
    "refunded_twice",  # more than one refund of one charge
    "refund_mismatch",  # a refund of no charge, of another owner's or generation's, or
    #                     of another amount
]


@dataclass(frozen=True)
class Violation:
    """One broken rule of the ledger: whose (a user, or a deleted account's stand-in),
    which entry when one is to blame (the charge, or the refund), and what is wrong."""

    rule: Rule
    detail: str
    user_id: UUID | None = None
    erased_account: UUID | None = None
    entry_id: int | None = None

    def __str__(self) -> str:
        who = (
            f"user {self.user_id}"
            if self.user_id
            else f"erased account {self.erased_account}"
            if self.erased_account
            else "-"
        )
        entry = f" entry #{self.entry_id}" if self.entry_id is not None else ""
        return f"{self.rule}: {who}{entry}: {self.detail}"


# Each rule is one statement, so each reads one snapshot: the balance and the entries it
# sums are written in one transaction, and a refund after its charge, so a rule never
# sees a half-written change. Amounts are summed by their delta whatever the kind, so a
# new kind (a reversal, a debt) counts without a change here.
_BALANCE_MISMATCH = """
SELECT coalesce(b.user_id, s.user_id) AS user_id, b.tokens AS balance,
       coalesce(s.total, 0) AS total, coalesce(s.entries, 0) AS entries
FROM balances b
FULL JOIN (SELECT user_id, sum(delta) AS total, count(*) AS entries FROM ledger_entries
           WHERE user_id IS NOT NULL GROUP BY user_id) s ON s.user_id = b.user_id
WHERE b.tokens IS DISTINCT FROM coalesce(s.total, 0)
"""
_NEGATIVE_BALANCE = "SELECT user_id, tokens FROM balances WHERE tokens < 0"
# Any entry that takes tokens moved the balance (under its row lock) before it took its
# id, and every entry it depended on had committed, id and all, by then: so in id order
# the running sum is the balance each entry left, and never below zero.
_NEGATIVE_HISTORY = """
SELECT DISTINCT ON (user_id, erased_account) user_id, erased_account, id, running
FROM (SELECT id, user_id, erased_account,
             sum(delta) OVER (PARTITION BY user_id, erased_account ORDER BY id) AS running
      FROM ledger_entries) h
WHERE running < 0
ORDER BY user_id, erased_account, id
"""
_WRONG_SIGN = """
SELECT id, user_id, erased_account, kind, delta FROM ledger_entries
WHERE (kind = 'charge' AND delta >= 0) OR (kind IN ('grant', 'purchase') AND delta <= 0)
"""
_UNOWNED = """
SELECT id, user_id, erased_account FROM ledger_entries
WHERE (user_id IS NULL) = (erased_account IS NULL)
"""
_CHARGED_TWICE = """
SELECT generation_id, min(user_id::text)::uuid AS user_id, count(*) AS charges,
       array_agg(id ORDER BY id) AS ids
FROM ledger_entries WHERE kind = 'charge' AND generation_id IS NOT NULL
GROUP BY generation_id HAVING count(*) > 1
"""
_FOREIGN_GENERATION = """
SELECT e.id, e.user_id, e.generation_id, g.user_id AS owner
FROM ledger_entries e JOIN generations g ON g.id = e.generation_id
WHERE g.user_id IS DISTINCT FROM e.user_id
"""
_REFUNDED_TWICE = """
SELECT c.id, c.user_id, c.erased_account, array_agg(r.id ORDER BY r.id) AS refunds
FROM ledger_entries r JOIN ledger_entries c ON c.id = r.refund_of
GROUP BY c.id, c.user_id, c.erased_account HAVING count(*) > 1
"""
_REFUND_MISMATCH = """
SELECT r.id, r.kind, r.user_id, r.erased_account, r.generation_id, r.delta, r.refund_of,
       c.id AS charge_id, c.kind AS charge_kind, c.user_id AS charge_user,
       c.erased_account AS charge_erased, c.generation_id AS charge_generation,
       c.delta AS charge_delta
FROM ledger_entries r LEFT JOIN ledger_entries c ON c.id = r.refund_of
WHERE (r.kind = 'refund' OR r.refund_of IS NOT NULL)
  AND (r.kind <> 'refund' OR c.id IS NULL OR c.kind <> 'charge'
       OR r.user_id IS DISTINCT FROM c.user_id
       OR r.erased_account IS DISTINCT FROM c.erased_account
       OR r.generation_id IS DISTINCT FROM c.generation_id
       OR r.delta <> -c.delta)
"""


def _refund_problem(row: dict[str, Any]) -> str:
    if row["charge_id"] is None:
        return f"refunds #{row['refund_of']}, which is no entry"
    if row["kind"] != "refund":
        return f"a {row['kind']} that says it refunds #{row['charge_id']}"
    if row["charge_kind"] != "charge":
        return f"refunds #{row['charge_id']}, a {row['charge_kind']}, not a charge"
    problems = []
    if (row["user_id"], row["erased_account"]) != (row["charge_user"], row["charge_erased"]):
        problems.append(
            f"charge #{row['charge_id']} is of {row['charge_user'] or row['charge_erased']}"
        )
    if row["generation_id"] != row["charge_generation"]:
        problems.append(
            f"refund names generation {row['generation_id']}, its charge {row['charge_generation']}"
        )
    if row["delta"] != -row["charge_delta"]:
        problems.append(
            f"refund of {row['delta']:+d} for charge #{row['charge_id']} of"
            f" {row['charge_delta']:+d}"
        )
    return "; ".join(problems)


async def check_invariant(conn: Conn) -> list[Violation]:
    """Every broken rule of the ledger, none when it holds:

    - for every user, the stored balance equals the sum of their entries' deltas (a
      balance row with no entries holds 0; entries with no balance row are a mismatch);
    - no stored balance is negative, and no owner's running sum, in id order, ever was;
    - charges take tokens, grants and purchases add them;
    - each generation is charged at most once, and its entries are its owner's;
    - each charge is refunded at most once; each refund refunds a charge of the same
      owner and the same generation, by the opposite amount.

    A deleted account's entries (``erase_account``) stay, under a random stand-in and
    without generation, key or reason, and its balance row is gone: for them the
    invariant says their running sum never went below zero (what is left is the balance
    the account forfeited), each refund pairs with a charge of the same stand-in by the
    opposite amount (both without generation), and no entry is half erased."""
    found: list[Violation] = []

    async def rows(sql: str) -> list[dict[str, Any]]:
        cur = await conn.execute(sql)
        return await cur.fetchall()

    for row in await rows(_BALANCE_MISMATCH):
        stored = "no balance row" if row["balance"] is None else f"balance {row['balance']}"
        found.append(
            Violation(
                "balance_mismatch",
                f"{stored}, but its {row['entries']} entries sum to {row['total']}",
                user_id=row["user_id"],
            )
        )
    for row in await rows(_NEGATIVE_BALANCE):
        found.append(
            Violation("negative_balance", f"balance {row['tokens']}", user_id=row["user_id"])
        )
    for row in await rows(_NEGATIVE_HISTORY):
        found.append(
            Violation(
                "negative_history",
                f"the entries' running sum is {row['running']} after entry #{row['id']}",
                user_id=row["user_id"],
                erased_account=row["erased_account"],
                entry_id=row["id"],
            )
        )
    for row in await rows(_WRONG_SIGN):
        found.append(
            Violation(
                "wrong_sign",
                f"a {row['kind']} of {row['delta']:+d}",
                user_id=row["user_id"],
                erased_account=row["erased_account"],
                entry_id=row["id"],
            )
        )
    for row in await rows(_UNOWNED):
        found.append(
            Violation(
                "unowned_entry",
                "both a user and an erased account" if row["user_id"] else "no owner at all",
                user_id=row["user_id"],
                erased_account=row["erased_account"],
                entry_id=row["id"],
            )
        )
    for row in await rows(_CHARGED_TWICE):
        found.append(
            Violation(
                "charged_twice",
                f"generation {row['generation_id']} has {row['charges']} charges:"
                f" {', '.join(f'#{i}' for i in row['ids'])}",
                user_id=row["user_id"],
                entry_id=row["ids"][-1],
            )
        )
    for row in await rows(_FOREIGN_GENERATION):
        found.append(
            Violation(
                "foreign_generation",
                f"names generation {row['generation_id']}, of user {row['owner']}",
                user_id=row["user_id"],
                entry_id=row["id"],
            )
        )
    for row in await rows(_REFUNDED_TWICE):
        found.append(
            Violation(
                "refunded_twice",
                f"charge refunded {len(row['refunds'])} times:"
                f" {', '.join(f'#{i}' for i in row['refunds'])}",
                user_id=row["user_id"],
                erased_account=row["erased_account"],
                entry_id=row["id"],
            )
        )
    for row in await rows(_REFUND_MISMATCH):
        found.append(
            Violation(
                "refund_mismatch",
                _refund_problem(row),
                user_id=row["user_id"],
                erased_account=row["erased_account"],
                entry_id=row["id"],
            )
        )
    return found


# --- the owner's grants -------------------------------------------------------------


@dataclass(frozen=True)
class Granted:
    entry: LedgerEntry
    made: bool  # False: the key had granted before, and nothing moved this time


async def admin_grant(conn: Conn, user_id: UUID, tokens: int, *, key: str, reason: str) -> Granted:
    """The owner's grant (``bitbuddies grant``): a ``grant`` entry with the owner's
    reason, under ``admin_grant_key(key)``. Repeating it with the same key grants once;
    KeyReused when the key granted another amount or to another user."""
    if tokens <= 0:
        raise LedgerError("a grant adds at least one token")
    if not reason.strip():
        raise LedgerError("an owner's grant says why")
    idempotency_key = admin_grant_key(key)
    made = False
    found = await _by_key(conn, idempotency_key)
    if found is None:
        found = await _append(
            conn, user_id=user_id, delta=tokens, kind="grant", key=idempotency_key, reason=reason
        )
        made = found is not None
        found = found or await _by_key(conn, idempotency_key)  # a concurrent one made it
        assert found is not None
    entry = _same(found, user_id, "grant")
    if entry.delta != tokens:
        raise KeyReused(f"key {key!r} granted {entry.delta} token(s), not {tokens}")
    return Granted(entry, made)


# --- a user's statement -------------------------------------------------------------

# How an entry shows to its user and the owner: the kind, and for a grant whose key
# says who made it, which grant. Kinds not listed here (new ones) show as themselves.
StatementKind = str


def statement_kind(entry: LedgerEntry) -> StatementKind:
    """``signup_grant`` and ``admin_grant`` for those grants (told apart by the key they
    were written under, whose formats are all made in this module), else the kind."""
    if entry.kind == "grant":
        if entry.idempotency_key.startswith(_SIGNUP_PREFIX):
            return "signup_grant"
        if entry.idempotency_key.startswith(_ADMIN_GRANT_PREFIX):
            return "admin_grant"
    return entry.kind


async def entries_for_user(
    conn: Conn, user_id: UUID, *, before: int | None = None, limit: int = 50
) -> list[LedgerEntry]:
    """The user's entries, newest first (by id: an entry that depends on another, a
    charge on the grant that paid for it, always has the larger id), those with an id
    below ``before`` when given."""
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM ledger_entries WHERE user_id = %s"
        " AND (%s::bigint IS NULL OR id < %s::bigint) ORDER BY id DESC LIMIT %s",
        (user_id, before, before, limit),
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
    return f"{_SIGNUP_PREFIX}{user_id}"


_SIGNUP_PREFIX = "signup:"
_ADMIN_GRANT_PREFIX = "admin-grant:"


def admin_grant_key(key: str) -> str:
    """The key an owner's grant is written under: the owner's own key (``--key``), so a
    repeated command grants once."""
    return f"{_ADMIN_GRANT_PREFIX}{key}"


def purchase_key(checkout_session_id: str) -> str:
    """The one key a Stripe Checkout Session's tokens are credited under (kind
    ``purchase``, with ``grant``): every event about the session, whatever its id, finds
    the entry made first."""
    return f"purchase:{checkout_session_id}"


@dataclass(frozen=True)
class OrphanedCharge:
    """A charge with no refund on a generation that ended badly with no character."""

    charge_id: int
    generation_id: UUID
    user_id: UUID
    status: Literal["failed", "cancelled"]
    step: str | None
    error_code: str | None


_ORPHANED_CHARGES = """
SELECT c.id AS charge_id, g.id AS generation_id, g.user_id, g.status, g.step, g.error_code
FROM ledger_entries c
JOIN generations g ON g.id = c.generation_id
WHERE c.kind = 'charge' AND c.id > %s
  AND g.status IN ('failed', 'cancelled')
  AND g.character_id IS NULL
  AND g.updated_at < now() - %s
  AND NOT EXISTS (SELECT 1 FROM ledger_entries r WHERE r.refund_of = c.id)
  AND NOT EXISTS (SELECT 1 FROM characters ch WHERE ch.generation_id = g.id)
ORDER BY c.id
LIMIT %s
"""


async def unrefunded_charges_of_ended(
    conn: Conn, *, after: int, ended_before: timedelta, limit: int
) -> list[OrphanedCharge]:
    """Charges (id above ``after``, in id order, at most ``limit``) left unrefunded on a
    generation that failed or was cancelled more than ``ended_before`` ago and has no
    character (billing/reconcile.py)."""
    cur = await conn.execute(_ORPHANED_CHARGES, (after, ended_before, limit))
    return [OrphanedCharge(**row) for row in await cur.fetchall()]
