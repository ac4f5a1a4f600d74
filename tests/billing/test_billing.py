"""The ledger against real PostgreSQL: idempotent by key, never negative under races."""

from __future__ import annotations

import asyncio
import uuid

import httpx
from psycopg_pool import AsyncConnectionPool

from billing import ledger
from tests.conftest import Stack, insert_generation
from tests.support.client import signup


async def test_twenty_concurrent_charges_against_a_balance_of_five_succeed_five_times(
    stack: Stack,
    http: httpx.AsyncClient,
    db: AsyncConnectionPool,  # type: ignore[type-arg]
) -> None:
    user = await signup(http)  # 3 free tokens
    user_id = uuid.UUID(user.id)
    async with db.connection() as conn, conn.transaction():
        await ledger.grant(conn, user_id, 2, idempotency_key=f"test-topup:{user_id}")
    assert await user.balance() == 5
    generations = [await insert_generation(db, user_id) for _ in range(20)]

    async def attempt(generation_id: uuid.UUID) -> bool:
        async with db.connection() as conn:
            try:
                async with conn.transaction():
                    await ledger.charge(
                        conn,
                        user_id,
                        idempotency_key=ledger.charge_key(generation_id),
                        generation_id=generation_id,
                    )
                return True
            except ledger.InsufficientTokens:
                return False

    results = await asyncio.gather(*(attempt(g) for g in generations))
    assert sum(results) == 5
    assert await user.balance() == 0


async def test_a_charge_retried_with_its_key_charges_once_even_concurrently(
    stack: Stack,
    http: httpx.AsyncClient,
    db: AsyncConnectionPool,  # type: ignore[type-arg]
) -> None:
    user = await signup(http)
    user_id = uuid.UUID(user.id)
    generation_id = await insert_generation(db, user_id)

    async def attempt() -> int:
        async with db.connection() as conn, conn.transaction():
            entry = await ledger.charge(
                conn,
                user_id,
                idempotency_key=ledger.charge_key(generation_id),
                generation_id=generation_id,
            )
            return entry.id

    ids = await asyncio.gather(*(attempt() for _ in range(10)))
    assert len(set(ids)) == 1
    assert await user.balance() == 2


async def test_the_ledger_cannot_be_rewritten(
    stack: Stack,
    http: httpx.AsyncClient,
    db: AsyncConnectionPool,  # type: ignore[type-arg]
) -> None:
    user = await signup(http)
    async with db.connection() as conn:
        try:
            await conn.execute(
                "UPDATE ledger_entries SET delta = 100 WHERE user_id = %s", (uuid.UUID(user.id),)
            )
        except Exception as err:
            assert "append-only" in str(err)
        else:
            raise AssertionError("an UPDATE of the ledger must fail")
    assert await user.balance() == 3
