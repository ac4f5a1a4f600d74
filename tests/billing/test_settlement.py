"""The one settle path (billing/settlement.py) against real PostgreSQL: the workflow, the
API's failed start and the sweep settling the same generation at once refund it once and
end its log once; a generation that was never charged is not said to be refunded."""

from __future__ import annotations

import asyncio
import uuid

import httpx
from prometheus_client import REGISTRY
from psycopg_pool import AsyncConnectionPool

from billing import ledger, settlement
from infra import progress
from infra.database import records
from tests.conftest import Stack, insert_generation, ledger_kinds
from tests.support.client import signup
from workflows import contract

INTERNAL = settlement.Ending(
    status="failed", step="animate", error_code="internal", message=contract.INTERNAL_FAILURE
)


async def test_three_settlers_racing_refund_once_and_end_the_log_once(
    stack: Stack,
    http: httpx.AsyncClient,
    db: AsyncConnectionPool,  # type: ignore[type-arg]
) -> None:
    user = await signup(http)
    generation_id = await insert_generation(db, uuid.UUID(user.id), charged=True)
    assert await user.balance() == 2

    async def settle(settled_by: str) -> settlement.Settled:
        async with db.connection() as conn:
            return await settlement.settle(
                conn, generation_id, INTERNAL, settled_by=settled_by, reason="test"
            )

    labels = {"step": "animate", "reason": "internal"}

    def counted() -> tuple[float, float]:
        failed = REGISTRY.get_sample_value("bitbuddies_generations_failed_total", labels)
        refunded = REGISTRY.get_sample_value("bitbuddies_generations_refunded_total", labels)
        return failed or 0.0, refunded or 0.0

    before = counted()
    # The workflow's key (its own uuid4), the sweep's and the failed start's, each twice.
    settlers = [str(uuid.uuid4()), "sweep", "start"] * 2
    results = await asyncio.gather(*(settle(by) for by in settlers))

    assert await user.balance() == 3
    assert await ledger_kinds(db, generation_id) == ["charge", "refund"]
    assert all(r.refunded for r in results)
    assert len({r.event.id for r in results}) == 1, "one terminal event stands for all"
    assert sum(r.ended_here for r in results) == 1, "one settler ended it; metrics count it"
    # this process's metrics: the one ending counted once, whoever settled it
    assert counted() == (before[0] + 1, before[1] + 1)
    async with db.connection() as conn:
        events = await progress.history(conn, str(generation_id))
        generation = await records.generation(conn, generation_id)
    assert [e.event for e in events] == ["failed"]
    message = f"{contract.INTERNAL_FAILURE} {contract.REFUNDED}"
    assert events[0].data["message"] == message and events[0].data["refunded"] is True
    assert generation is not None
    assert (generation.status, generation.error_code, generation.error) == (
        "failed",
        "internal",
        message,
    )


async def test_a_generation_never_charged_is_not_said_to_be_refunded(
    stack: Stack,
    http: httpx.AsyncClient,
    db: AsyncConnectionPool,  # type: ignore[type-arg]
) -> None:
    user = await signup(http)
    generation_id = await insert_generation(db, uuid.UUID(user.id), charged=False)
    async with db.connection() as conn:
        settled = await settlement.settle(
            conn, generation_id, INTERNAL, settled_by="sweep", reason="test"
        )
    assert not settled.refunded
    assert settled.event.data["message"] == contract.INTERNAL_FAILURE
    assert contract.REFUNDED not in settled.event.data["message"]
    assert settled.event.data["refunded"] is False
    assert await user.balance() == 3
    assert await ledger_kinds(db, generation_id) == []


async def test_every_refund_key_is_the_ledgers_and_names_its_generation(
    stack: Stack,
    http: httpx.AsyncClient,
    db: AsyncConnectionPool,  # type: ignore[type-arg]
) -> None:
    user = await signup(http)
    generation_id = await insert_generation(db, uuid.UUID(user.id), charged=True)
    async with db.connection() as conn:
        await settlement.settle(conn, generation_id, INTERNAL, settled_by="sweep", reason="t")
        entries = await ledger.entries_for_generation(conn, generation_id)
    assert [e.idempotency_key for e in entries] == [
        ledger.charge_key(generation_id),
        ledger.refund_key(generation_id, "sweep"),
    ]
