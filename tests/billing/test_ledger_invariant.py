"""The ledger's invariant (``ledger.check_invariant``) and the owner's ledger commands.

Each broken rule is made on purpose inside a transaction that is rolled back, so no
other test ever sees it; ``check-ledger`` needs one it can read from its own process, a
balance moved by hand for a moment and put back in a ``finally``. The commands run as
the installed ``bitbuddies`` program with the stack's environment."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
from psycopg_pool import AsyncConnectionPool

from billing import ledger
from tests.conftest import Stack, insert_generation
from tests.support.cli import bitbuddies
from tests.support.client import User, signup

Pool = AsyncConnectionPool  # type: ignore[type-arg]
Rules = set[tuple[str, uuid.UUID | None]]


def _rules(violations: list[ledger.Violation]) -> Rules:
    return {(v.rule, v.user_id or v.erased_account) for v in violations}


async def _charged(db: Pool, user: User) -> tuple[uuid.UUID, ledger.LedgerEntry]:
    generation_id = await insert_generation(db, uuid.UUID(user.id), charged=True)
    async with db.connection() as conn:
        (charge,) = await ledger.entries_for_generation(conn, generation_id)
    return generation_id, charge


async def _broken(db: Pool, *statements: tuple[str, tuple[Any, ...]]) -> list[ledger.Violation]:
    """The violations seen after ``statements``, in a transaction then rolled back."""
    async with db.connection() as conn, conn.transaction(force_rollback=True):
        for sql, params in statements:
            await conn.execute(sql, params)
        return await ledger.check_invariant(conn)


_ENTRY = (
    "INSERT INTO ledger_entries (user_id, erased_account, delta, kind, idempotency_key,"
    " generation_id, refund_of, reason) VALUES (%s, %s, %s, %s, %s, %s, %s, 'scratch')"
)


def _entry(
    user_id: uuid.UUID | None,
    delta: int,
    kind: str,
    *,
    generation_id: uuid.UUID | None = None,
    refund_of: int | None = None,
    erased_account: uuid.UUID | None = None,
) -> tuple[str, tuple[Any, ...]]:
    """A raw entry, past ``ledger``'s rules (and without moving any balance)."""
    key = f"scratch:{uuid.uuid4()}"
    return _ENTRY, (user_id, erased_account, delta, kind, key, generation_id, refund_of)


async def test_the_invariant_holds_and_reports_each_rule_broken_on_purpose(
    stack: Stack, http: httpx.AsyncClient, db: Pool
) -> None:
    a, b = await signup(http), await signup(http)
    ua, ub = uuid.UUID(a.id), uuid.UUID(b.id)
    generation_id, charge = await _charged(db, a)
    async with db.connection() as conn:
        assert await ledger.check_invariant(conn) == []

    # The stored balance off its entries' sum.
    moved = ("UPDATE balances SET tokens = tokens + 5 WHERE user_id = %s", (ua,))
    found = await _broken(db, moved)
    assert _rules(found) == {("balance_mismatch", ua)}
    assert "balance 7, but its 2 entries sum to 2" in str(found[0])

    # A refund of the wrong amount (its balance moved with it, so only that is wrong).
    refund = _entry(ua, 2, "refund", generation_id=generation_id, refund_of=charge.id)
    balance = ("UPDATE balances SET tokens = tokens + 2 WHERE user_id = %s", (ua,))
    found = await _broken(db, refund, balance)
    assert _rules(found) == {("refund_mismatch", ua)}
    assert f"refund of +2 for charge #{charge.id} of -1" in found[0].detail

    # A refund, to another user, of A's charge: not theirs, and of A's generation.
    stolen = _entry(ub, 1, "refund", generation_id=generation_id, refund_of=charge.id)
    found = await _broken(
        db, stolen, ("UPDATE balances SET tokens = tokens + 1 WHERE user_id = %s", (ub,))
    )
    assert _rules(found) == {("refund_mismatch", ub), ("foreign_generation", ub)}
    # ... and a refund naming another generation than its charge's.
    other_generation = await insert_generation(db, ua)
    elsewhere = _entry(ua, 1, "refund", generation_id=other_generation, refund_of=charge.id)
    found = await _broken(
        db, elsewhere, ("UPDATE balances SET tokens = tokens + 1 WHERE user_id = %s", (ua,))
    )
    assert _rules(found) == {("refund_mismatch", ua)}
    assert "refund names generation" in found[0].detail

    # Refunded twice, past the unique index that normally stops it.
    twice = [
        ("ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_refund_of_key", ()),
        _entry(ua, 1, "refund", generation_id=generation_id, refund_of=charge.id),
        _entry(ua, 1, "refund", generation_id=generation_id, refund_of=charge.id),
        ("UPDATE balances SET tokens = tokens + 2 WHERE user_id = %s", (ua,)),
    ]
    found = await _broken(db, *twice)
    assert _rules(found) == {("refunded_twice", ua)}
    assert found[0].entry_id == charge.id

    # Charged twice for one generation; a charge that adds.
    again = _entry(ua, -1, "charge", generation_id=generation_id)
    found = await _broken(
        db, again, ("UPDATE balances SET tokens = tokens - 1 WHERE user_id = %s", (ua,))
    )
    assert _rules(found) == {("charged_twice", ua)}
    found = await _broken(db, _entry(ua, 1, "charge", generation_id=other_generation))
    assert _rules(found) == {("wrong_sign", ua), ("balance_mismatch", ua)}

    # A negative balance, past the CHECK that normally stops it.
    negative = [
        ("ALTER TABLE balances DROP CONSTRAINT balances_tokens_check", ()),
        ("UPDATE balances SET tokens = -1 WHERE user_id = %s", (ub,)),
        _entry(ub, -4, "charge", generation_id=await insert_generation(db, ub)),
    ]
    found = await _broken(db, *negative)
    assert _rules(found) == {("negative_balance", ub), ("negative_history", ub)}
    async with db.connection() as conn:
        assert await ledger.check_invariant(conn) == []  # every scratch row rolled back


async def test_debts_and_payments_taken_back_are_checked(
    stack: Stack, http: httpx.AsyncClient, db: Pool
) -> None:
    a = await signup(http)
    ua = uuid.UUID(a.id)
    session = f"cs_test_{uuid.uuid4().hex}"
    checkout = (
        "INSERT INTO checkout_sessions (id, user_id, pack, tokens, amount, currency, status)"
        " VALUES (%s, %s, 'pack-10', 10, 500, 'eur', 'paid')",
        (session, ua),
    )

    def paid(delta: int, kind: str) -> tuple[str, tuple[Any, ...]]:
        return (
            "INSERT INTO ledger_entries (user_id, delta, kind, idempotency_key, payment_id)"
            " VALUES (%s, %s, %s, %s, %s)",
            (ua, delta, kind, f"scratch:{uuid.uuid4()}", session),
        )

    def move(delta: int) -> tuple[str, tuple[Any, ...]]:
        return ("UPDATE balances SET tokens = tokens + %s WHERE user_id = %s", (delta, ua))

    # Owing while holding tokens (a credit that did not settle the debt).
    debt = (
        "INSERT INTO token_debts (user_id, session_id, tokens, idempotency_key)"
        " VALUES (%s, %s, 2, %s)",
        (ua, session, f"scratch:{uuid.uuid4()}"),
    )
    found = await _broken(db, checkout, paid(10, "purchase"), move(10), debt)
    assert _rules(found) == {("debt_mismatch", ua)}
    assert "owes 2 token(s) while holding 13" in found[0].detail
    # Settling more than was owed.
    found = await _broken(db, _entry(ua, -1, "debt"), move(-1))
    assert _rules(found) == {("debt_mismatch", ua)}
    assert "settled 1 token(s) more than it owed" in found[0].detail
    # Taking back more than the payment bought; a reversal that adds.
    found = await _broken(db, checkout, paid(10, "purchase"), paid(-11, "reversal"), move(-1))
    assert _rules(found) == {("payment_taken_back", ua)}
    assert f"payment {session} bought 10 token(s), and 11 are taken back" in found[0].detail
    found = await _broken(db, checkout, paid(10, "purchase"), paid(1, "reversal"), move(11))
    assert _rules(found) == {("wrong_sign", ua), ("payment_taken_back", ua)}
    async with db.connection() as conn:
        assert await ledger.check_invariant(conn) == []


async def test_a_deleted_accounts_entries_keep_the_invariant(
    stack: Stack, http: httpx.AsyncClient, db: Pool
) -> None:
    user = await signup(http)
    await _charged(db, user)
    gone = await http.request(
        "DELETE", "/v1/me", json={"password": "correct horse"}, headers=user.headers
    )
    assert gone.status_code == 204, gone.text
    async with db.connection() as conn:
        assert await ledger.check_invariant(conn) == []
        cur = await conn.execute(
            "SELECT erased_account, sum(delta) AS total FROM ledger_entries"
            " WHERE erased_account IS NOT NULL GROUP BY erased_account ORDER BY max(id) DESC"
            " LIMIT 1"
        )
        row = await cur.fetchone()
    # 3 granted, 1 charged, refunded when the deletion cancelled it: 3 forfeited
    assert row is not None and row["total"] == 3
    erased = row["erased_account"]
    # Its entries may not take more than they gave, even with no balance row to check.
    overdrawn = _entry(None, -4, "charge", erased_account=erased)
    assert _rules(await _broken(db, overdrawn)) == {("negative_history", erased)}


async def test_grant_is_once_per_key_and_says_the_key_it_made(
    stack: Stack, http: httpx.AsyncClient, db: Pool
) -> None:
    user = await signup(http)
    key = f"support-{uuid.uuid4().hex[:8]}"
    args = ("grant", user.email, "7", "--reason", "sorry for the outage", "--key", key)
    first = bitbuddies(stack, *args)
    assert first.returncode == 0, first.stderr
    assert "granted +7 to" in first.stdout and "balance 10" in first.stdout
    repeat = bitbuddies(stack, *args)
    assert repeat.returncode == 0, repeat.stderr
    assert "already granted" in repeat.stdout and "balance 10" in repeat.stdout
    assert await user.balance() == 10

    made = bitbuddies(stack, "grant", user.email.upper(), "2", "--reason", "a gift")
    assert made.returncode == 0, made.stderr
    match = re.search(r"^key (\S+)", made.stdout, re.MULTILINE)
    assert match is not None, made.stdout
    again = bitbuddies(stack, "grant", user.email, "2", "--reason", "a gift", "--key", match[1])
    assert "already granted" in again.stdout
    assert await user.balance() == 12

    other_amount = bitbuddies(stack, "grant", user.email, "8", "--reason", "x", "--key", key)
    assert other_amount.returncode == 1 and "granted 7" in other_amount.stderr
    someone_else = await signup(http)
    other_user = bitbuddies(stack, "grant", someone_else.email, "7", "--reason", "x", "--key", key)
    assert other_user.returncode == 1 and "names another entry" in other_user.stderr
    unknown = bitbuddies(stack, "grant", "nobody@example.com", "1", "--reason", "x")
    assert unknown.returncode == 1 and "no account" in unknown.stderr
    for bad in (["0"], ["-1"], ["1.5"]):
        refused = bitbuddies(stack, "grant", user.email, *bad, "--reason", "x")
        assert refused.returncode == 2, bad
    no_reason = bitbuddies(stack, "grant", user.email, "1")
    assert no_reason.returncode == 2
    assert await user.balance() == 12 and await someone_else.balance() == 3
    async with db.connection() as conn:
        entries = await ledger.entries_for_user(conn, uuid.UUID(user.id))
    assert [(ledger.statement_kind(e), e.delta) for e in entries] == [
        ("admin_grant", 2),
        ("admin_grant", 7),
        ("signup_grant", 3),
    ]
    assert entries[1].reason == "sorry for the outage"


async def test_ledger_lists_the_users_entries_newest_first_with_generations(
    stack: Stack, http: httpx.AsyncClient, db: Pool
) -> None:
    user = await signup(http)
    bitbuddies(stack, "grant", user.email, "2", "--reason", "for the test")
    generation_id, charge = await _charged(db, user)
    listed = bitbuddies(stack, "ledger", user.email)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert f"user {user.email} ({user.id})" in lines and "balance 4" in lines
    rows = [line.split() for line in lines if line.startswith("  #")]
    assert [(r[0], r[4], r[5]) for r in rows] == [
        (f"#{charge.id}", "charge", "-1"),
        (rows[1][0], "admin_grant", "+2"),
        (rows[2][0], "signup_grant", "+3"),
    ]
    assert rows[0][7] == str(generation_id) and rows[1][7] == "-"
    assert "reason: for the test" in listed.stdout
    one = bitbuddies(stack, "ledger", user.email, "--limit", "1")
    assert [line for line in one.stdout.splitlines() if line.startswith("  #")] == [
        line for line in lines if line.startswith(f"  #{charge.id} ")
    ]
    unknown = bitbuddies(stack, "ledger", "nobody@example.com")
    assert unknown.returncode == 1 and "no account" in unknown.stderr


async def test_check_ledger_exits_1_with_each_violation(
    stack: Stack, http: httpx.AsyncClient, db: Pool
) -> None:
    clean = bitbuddies(stack, "check-ledger")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "holds" in clean.stdout
    user = await signup(http)
    uid = uuid.UUID(user.id)
    async with db.connection() as conn:
        await conn.execute("UPDATE balances SET tokens = tokens + 5 WHERE user_id = %s", (uid,))
    try:
        broken = bitbuddies(stack, "check-ledger")
    finally:
        async with db.connection() as conn:
            await conn.execute("UPDATE balances SET tokens = tokens - 5 WHERE user_id = %s", (uid,))
    assert broken.returncode == 1, broken.stdout
    assert f"balance_mismatch: user {uid}: balance 8, but its 1 entries sum to 3" in (broken.stdout)
    assert bitbuddies(stack, "check-ledger").returncode == 0
