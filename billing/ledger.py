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

EntryKind = Literal["grant", "purchase", "charge", "refund", "reversal", "reinstatement", "debt"]
# What each kind does: ``grant`` and ``purchase`` add tokens (a gift, a payment); a
# ``charge`` spends one on a generation and its ``refund`` gives it back; a ``reversal``
# takes back unspent tokens of a payment refunded or disputed at Stripe, and a
# ``reinstatement`` returns them when a dispute is won; a ``debt`` entry settles part of
# what an account owes (``token_debts``: what a reversal could not take because the tokens
# were spent) out of a credit that just came in.


class LedgerError(Exception):
    """A ledger rule was broken."""


class InsufficientTokens(LedgerError):
    """The balance cannot cover the charge."""


class NothingToRefund(LedgerError):
    """No charge is recorded under that key."""


class TokensOwed(InsufficientTokens):
    """The account owes tokens (a payment taken back after its tokens were spent): no
    charge until a credit settles it."""

    def __init__(self, owed: int) -> None:
        super().__init__(f"the account owes {owed} token(s)")
        self.owed = owed


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
    payment_id: str | None = None  # the Checkout Session a purchase, reversal or
    #                                reinstatement belongs to


Conn = AsyncConnection[dict[str, Any]]

_COLUMNS = (
    "id, user_id, delta, kind, idempotency_key, generation_id, refund_of, reason, created_at,"
    " erased_account, payment_id"
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
    payment_id: str | None = None,
) -> LedgerEntry | None:
    """Move the balance and write the entry in one savepoint; None if the key (or the
    refunded charge) was taken by a concurrent transaction, with the balance untouched.
    A credit to an account that owes tokens settles the debt out of it at once (a
    ``debt`` entry after it), so an account never holds tokens while it owes."""
    try:
        async with conn.transaction():
            cur = await conn.execute(
                "UPDATE balances SET tokens = tokens + %s WHERE user_id = %s AND tokens + %s >= 0"
                " RETURNING tokens",
                (delta, user_id, delta),
            )
            moved = await cur.fetchone()
            if moved is None:
                raise InsufficientTokens(f"balance cannot cover {-delta} token(s)")
            cur = await conn.execute(
                f"INSERT INTO ledger_entries (user_id, delta, kind, idempotency_key,"
                f" generation_id, refund_of, reason, payment_id)"
                f" VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                f" ON CONFLICT DO NOTHING RETURNING {_COLUMNS}",
                (user_id, delta, kind, key, generation_id, refund_of, reason, payment_id),
            )
            row = await cur.fetchone()
            if row is None:
                raise _Conflict
            entry = LedgerEntry(**row)
            if delta > 0:
                await _settle_debt(conn, user_id, int(moved["tokens"]), entry)
            return entry
    except _Conflict:
        return None


async def _settle_debt(conn: Conn, user_id: UUID, balance_now: int, credit: LedgerEntry) -> None:
    """Pay what the account owes out of a credit that just came in (the balance row is
    locked by that credit's update, so no other change of this account interleaves)."""
    outstanding = await owed(conn, user_id)
    settle = min(outstanding, balance_now)
    if settle <= 0:
        return
    entry = await _append(
        conn,
        user_id=user_id,
        delta=-settle,
        kind="debt",
        key=f"debt:settled-by:{credit.id}",
        reason=f"settles {settle} token(s) owed, out of entry #{credit.id}",
    )
    assert entry is not None, "a fresh credit's settlement key cannot be taken"


async def owed(conn: Conn, user_id: UUID) -> int:
    """The tokens the account owes: its debts, less what ``debt`` entries settled."""
    cur = await conn.execute(
        "SELECT (SELECT coalesce(sum(tokens), 0) FROM token_debts WHERE user_id = %s)"
        " + (SELECT coalesce(sum(delta), 0) FROM ledger_entries"
        "    WHERE user_id = %s AND kind = 'debt') AS owed",
        (user_id, user_id),
    )
    row = await cur.fetchone()
    return int(row["owed"]) if row else 0


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
    payment_id: str | None = None,
) -> LedgerEntry:
    """Add tokens (a sign-up gift, or a purchase with the payment it came from)."""
    if tokens <= 0:
        raise LedgerError("a grant adds at least one token")
    if existing := await _by_key(conn, idempotency_key):
        return _same(existing, user_id, kind)
    entry = await _append(
        conn,
        user_id=user_id,
        delta=tokens,
        kind=kind,
        key=idempotency_key,
        reason=reason,
        payment_id=payment_id,
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
    """Spend tokens; InsufficientTokens when the balance cannot cover them (TokensOwed
    when that is because the account owes: it holds no tokens while it does)."""
    if existing := await _by_key(conn, idempotency_key):
        return _same(existing, user_id, "charge")
    try:
        entry = await _append(
            conn,
            user_id=user_id,
            delta=-tokens,
            kind="charge",
            key=idempotency_key,
            generation_id=generation_id,
        )
    except InsufficientTokens:
        if (debt := await owed(conn, user_id)) > 0:
            raise TokensOwed(debt) from None
        raise
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


# --- payments refunded or disputed at Stripe -----------------------------------------


@dataclass(frozen=True)
class PaymentAdjustment:
    """What bringing a payment's take-back to its target moved."""

    taken: int = 0  # unspent tokens taken back (a ``reversal``)
    owed: int = 0  # tokens the account could not give back and now owes (a debt)
    returned: int = 0  # tokens given back (a ``reinstatement``)
    forgiven: int = 0  # debt of this payment cancelled

    @property
    def moved(self) -> bool:
        return any((self.taken, self.owed, self.returned, self.forgiven))


async def taken_back(conn: Conn, payment_id: str) -> int:
    """The tokens of a payment taken back so far, net: reversals and debts, less
    reinstatements and cancelled debts."""
    cur = await conn.execute(
        "SELECT (SELECT coalesce(-sum(delta), 0) FROM ledger_entries WHERE payment_id = %s"
        "        AND kind IN ('reversal', 'reinstatement'))"
        " + (SELECT coalesce(sum(tokens), 0) FROM token_debts WHERE session_id = %s) AS net",
        (payment_id, payment_id),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row["net"])


async def adjust_payment(
    conn: Conn, user_id: UUID, payment_id: str, target: int, *, reason: str
) -> PaymentAdjustment:
    """Bring the tokens taken back from a payment (``taken_back``) to ``target``, in the
    caller's transaction, which must hold the payment's row locked (billing/payments.py
    does): more taken back comes out of the unspent balance first (a ``reversal``) and
    the rest becomes a debt; less gives back, cancelling this payment's debt still owed
    first and returning the rest (a ``reinstatement``, which settles any other debt).
    Calling it again with the same target moves nothing."""
    await conn.execute("SELECT 1 FROM balances WHERE user_id = %s FOR UPDATE", (user_id,))
    cur = await conn.execute(
        "SELECT (SELECT count(*) FROM ledger_entries WHERE payment_id = %s"
        "        AND kind IN ('reversal', 'reinstatement'))"
        " + (SELECT count(*) FROM token_debts WHERE session_id = %s) AS moves",
        (payment_id, payment_id),
    )
    row = await cur.fetchone()
    assert row is not None
    step = int(row["moves"])  # the keys below are this adjustment's own
    diff = target - await taken_back(conn, payment_id)
    if diff > 0:
        take = min(diff, await balance(conn, user_id))
        if take:
            entry = await _append(
                conn,
                user_id=user_id,
                delta=-take,
                kind="reversal",
                key=_payment_key(payment_id, step, "reversal"),
                reason=reason,
                payment_id=payment_id,
            )
            assert entry is not None, "the payment's row is locked: its keys are free"
        if diff - take:
            await _add_debt(conn, user_id, payment_id, diff - take, step)
        return PaymentAdjustment(taken=take, owed=diff - take)
    if diff < 0:
        back = -diff
        cur = await conn.execute(
            "SELECT coalesce(sum(tokens), 0) AS debt FROM token_debts WHERE session_id = %s",
            (payment_id,),
        )
        debt_row = await cur.fetchone()
        assert debt_row is not None
        forgive = max(0, min(back, int(debt_row["debt"]), await owed(conn, user_id)))
        if forgive:
            await _add_debt(conn, user_id, payment_id, -forgive, step)
        if back - forgive:
            entry = await _append(
                conn,
                user_id=user_id,
                delta=back - forgive,
                kind="reinstatement",
                key=_payment_key(payment_id, step, "reinstatement"),
                reason=reason,
                payment_id=payment_id,
            )
            assert entry is not None, "the payment's row is locked: its keys are free"
        return PaymentAdjustment(returned=back - forgive, forgiven=forgive)
    return PaymentAdjustment()


async def _add_debt(conn: Conn, user_id: UUID, payment_id: str, tokens: int, step: int) -> None:
    await conn.execute(
        "INSERT INTO token_debts (user_id, session_id, tokens, idempotency_key)"
        " VALUES (%s, %s, %s, %s)",
        (user_id, payment_id, tokens, _payment_key(payment_id, step, "debt")),
    )


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
    generation, the payment, the key and the reason go (keys and reasons name the user or
    their generations, and Stripe ties a payment to its buyer); the amount, kind, refund
    link and time stay, under ``erased_account``, a random id the caller makes and keeps
    nowhere. The one update the ledger's trigger allows (migrations 0013, 0018). Returns
    how many entries were erased."""
    cur = await conn.execute(
        "UPDATE ledger_entries SET user_id = NULL, erased_account = %s, generation_id = NULL,"
        " reason = NULL, payment_id = NULL, idempotency_key = 'erased:' || id"
        " WHERE user_id = %s",
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
    "debt_mismatch",  # an account that owes while it holds tokens, or settled more than
    #                   it owed
    "payment_taken_back",  # more taken back from a payment than it bought, or less than
    #                        nothing
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
WHERE (kind IN ('charge', 'reversal', 'debt') AND delta >= 0)
   OR (kind IN ('grant', 'purchase', 'refund', 'reinstatement') AND delta <= 0)
"""
# What an account owes is its debts less its ``debt`` entries; a credit settles it at
# once, so an account that owes holds nothing.
_DEBT_MISMATCH = """
WITH o AS (
    SELECT user_id, sum(t) AS owed
    FROM (SELECT user_id, tokens AS t FROM token_debts
          UNION ALL
          SELECT user_id, delta FROM ledger_entries WHERE kind = 'debt' AND user_id IS NOT NULL) x
    GROUP BY user_id)
SELECT o.user_id, o.owed, coalesce(b.tokens, 0) AS balance
FROM o LEFT JOIN balances b ON b.user_id = o.user_id
WHERE o.owed < 0 OR (o.owed > 0 AND coalesce(b.tokens, 0) > 0)
"""
# A payment's take-back (reversals and debts, less reinstatements and cancelled debts)
# stays between nothing and what the payment bought.
_PAYMENT_TAKEN_BACK = """
WITH l AS (
    SELECT payment_id, min(user_id::text)::uuid AS user_id,
           coalesce(sum(delta) FILTER (WHERE kind = 'purchase'), 0) AS bought,
           coalesce(-sum(delta) FILTER (WHERE kind IN ('reversal', 'reinstatement')), 0) AS back
    FROM ledger_entries WHERE payment_id IS NOT NULL GROUP BY payment_id),
d AS (
    SELECT session_id, min(user_id::text)::uuid AS user_id, sum(tokens) AS owed
    FROM token_debts GROUP BY session_id)
SELECT coalesce(l.payment_id, d.session_id) AS payment_id,
       coalesce(l.user_id, d.user_id) AS user_id, coalesce(l.bought, 0) AS bought,
       coalesce(l.back, 0) + coalesce(d.owed, 0) AS net
FROM l FULL JOIN d ON d.session_id = l.payment_id
WHERE coalesce(l.back, 0) + coalesce(d.owed, 0) NOT BETWEEN 0 AND coalesce(l.bought, 0)
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
    - charges, reversals and debt settlements take tokens; grants, purchases, refunds
      and reinstatements add them;
    - an account that owes tokens holds none, and never settled more than it owed; what
      is taken back from a payment is between nothing and what it bought;
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
    for row in await rows(_DEBT_MISMATCH):
        found.append(
            Violation(
                "debt_mismatch",
                f"owes {row['owed']} token(s) while holding {row['balance']}"
                if row["owed"] > 0
                else f"settled {-row['owed']} token(s) more than it owed",
                user_id=row["user_id"],
            )
        )
    for row in await rows(_PAYMENT_TAKEN_BACK):
        found.append(
            Violation(
                "payment_taken_back",
                f"payment {row['payment_id']} bought {row['bought']} token(s), and"
                f" {row['net']} are taken back",
                user_id=row["user_id"],
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


def _payment_key(payment_id: str, step: int, what: str) -> str:
    """The key of the ``step``-th adjustment of a payment's take-back (its reversal,
    reinstatement or debt row)."""
    return f"payment:{payment_id}:{step}:{what}"


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
