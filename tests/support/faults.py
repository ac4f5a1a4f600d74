"""What the fault tests check afterwards, through the public surface and the record:
the ledger invariant, the provider's submissions, the generations' outcomes."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from typing import Any

import httpx
from psycopg_pool import AsyncConnectionPool

from billing import ledger
from tests.conftest import permits_held
from tests.support.client import User, signup
from tests.support.photos import photo

TERMINAL = ("completed", "failed", "cancelled")
Pool = AsyncConnectionPool  # type: ignore[type-arg]


async def provider_requests(models: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await models.get("/_local/requests")
    response.raise_for_status()
    records: list[dict[str, Any]] = response.json()
    return records


async def job_running(models: httpx.AsyncClient, app: str, generation_id: str) -> bool:
    """Whether the model server runs a job of ``app`` for that generation right now."""
    return any(
        j["app"] == app and j["status"] == "IN_PROGRESS" and generation_id in str(j["arguments"])
        for j in await provider_requests(models)
    )


async def wait_until(predicate, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def drain_task_queue(temporal_address: str, task_queue: str, timeout: float = 120) -> None:
    """Until no workflow started on ``task_queue`` is running: a test that stops the only
    workers of a queue of its own lets its workflows end first (a failed generation's
    alert and cleanup run after its last event), or they would stay open for good."""
    from temporalio.client import Client

    temporal = await Client.connect(temporal_address)
    running = f'TaskQueue="{task_queue}" AND ExecutionStatus="Running"'
    deadline = time.monotonic() + timeout
    while (await temporal.count_workflows(running)).count:
        assert time.monotonic() < deadline, f"workflows on {task_queue} still running"
        await asyncio.sleep(0.2)


async def start_generations(http: httpx.AsyncClient, n: int) -> list[tuple[User, str]]:
    started = []
    for _ in range(n):
        user = await signup(http)
        response = await user.generate(photo("astronaut.png"))
        assert response.status_code == 202, response.text
        started.append((user, response.json()["id"]))
    return started


async def statuses(db: Pool, generation_ids: list[str]) -> dict[str, str]:
    async with db.connection() as conn:
        cur = await conn.execute(
            "SELECT id::text AS id, status FROM generations WHERE id = ANY(%s)",
            ([uuid.UUID(g) for g in generation_ids],),
        )
        return {row["id"]: row["status"] for row in await cur.fetchall()}


async def finished(db: Pool, generation_ids: list[str], timeout: float = 240) -> dict[str, str]:
    """Wait (reading the database, so an API restart cannot interrupt it) until every
    generation has ended; return their statuses."""

    async def ended() -> bool:
        now = await statuses(db, generation_ids)
        return all(now.get(g) in TERMINAL for g in generation_ids)

    await wait_until(ended, timeout)
    return await statuses(db, generation_ids)


async def assert_ledger_consistent(db: Pool, users: list[User]) -> None:
    """The ledger's invariant holds for everyone (``ledger.check_invariant``: each
    balance is the sum of its entries and none is negative, a charge is refunded at most
    once and by its own amount, ...); each of ``users`` has its balance; every failed (or
    cancelled) generation of theirs is charged once and refunded exactly once, and no
    completed one is refunded; and no provider permit is left held."""
    async with db.connection() as conn:
        violations = await ledger.check_invariant(conn)
        assert violations == [], "\n".join(str(v) for v in violations)
        uids = [uuid.UUID(user.id) for user in users]
        cur = await conn.execute(
            "SELECT count(*) AS n FROM balances WHERE user_id = ANY(%s)", (uids,)
        )
        row = await cur.fetchone()
        assert row is not None and row["n"] == len(set(uids)), "a user without a balance"
        for uid in uids:
            cur = await conn.execute(
                "SELECT g.status, count(e.id) FILTER (WHERE e.kind = 'charge') AS charges,"
                " count(e.id) FILTER (WHERE e.kind = 'refund') AS refunds"
                " FROM generations g LEFT JOIN ledger_entries e ON e.generation_id = g.id"
                " WHERE g.user_id = %s GROUP BY g.id, g.status",
                (uid,),
            )
            for gen in await cur.fetchall():
                assert gen["charges"] == 1, gen
                expected = 0 if gen["status"] == "completed" else 1
                assert gen["refunds"] == expected, gen
    assert await permits_held(db) == 0


def submissions_of(records: list[dict[str, Any]], generation_id: str) -> Counter[str]:
    """Submissions the model server saw for one generation (its storage keys name it)."""
    return Counter(r["app"] for r in records if generation_id in str(r["arguments"]))
