"""Billing's reconciliation (billing/reconcile.py) against the whole local stack, run the
way the owner runs it (``bitbuddies reconcile``: its Temporal Schedule triggered, the run
waited for), on the housekeeping worker with the stack's settings.

What it must fix: a charge whose generation was marked failed (or cancelled) without a
refund, refunded once however often it runs; a Checkout Session paid at Stripe whose
webhook never came, credited once, and the webhook arriving afterwards crediting nothing
more. What it must leave alone: a running generation, and a generation whose row says it
failed while its workflow still runs; and, until a later run, a generation that ended
moments ago (its settler may be at work) and a session paid moments ago (its webhook may
be on its way). The owner hears of the fixes in one
``reconciliation`` alert; the ledger's invariant holds after.

The stack's reconciler only looks at generations ended longer than
``BITBUDDIES_STALE_QUEUED_SECONDS`` ago (30 minutes here) and sessions created more than
ten minutes ago, so the rows are backdated (the stand-in's ``/_local/sessions/{id}/paid``
hook backdates the session and delivers no webhook). Other tests' data may be fixed by
the same run: the assertions are about this test's ids."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from temporalio.client import Client, WorkflowExecutionStatus

from billing import ledger, settlement
from infra import cli
from infra.database import alerts as alerts_repo
from tests.billing.test_stripe import (
    PACK_TOKENS,
    SIGNUP_TOKENS,
    all_delivered,
    open_session,
    purchases,
    status_of,
)
from tests.conftest import Stack, insert_generation, ledger_kinds
from tests.support.client import signup
from tests.support.pushover import Pushover
from workflows import contract
from workflows.contract import BitBuddyInput, ReconcileReport, RenderSpec

Pool = AsyncConnectionPool[AsyncConnection[dict[str, Any]]]
OLD = 3600  # seconds: past the stack's 30-minute settle_after and 10-minute paid grace
RUN_TIMEOUT = 120.0


@pytest.fixture
async def stand_in(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.cfg.stripe_url, timeout=30.0) as client:
        yield client


async def ended_unrefunded(
    db: Pool, user_id: uuid.UUID, status: str, age_seconds: int = OLD
) -> uuid.UUID:
    """A charged generation already marked ``status`` (failed, cancelled) with no refund,
    an hour ago, its workflow never started: one row, so the sweep (which starts queued
    generations) never sees it queued."""
    generation_id = uuid.uuid4()
    async with db.connection() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO generations (id, user_id, prompt, photo_key, status, step, error,"
            " error_code, created_at, updated_at) VALUES (%s, %s, 'a knight', 'k', %s,"
            " 'queued', 'older code', 'internal', now() - make_interval(secs => %s),"
            " now() - make_interval(secs => %s))",
            (generation_id, user_id, status, age_seconds, age_seconds),
        )
        await ledger.charge(
            conn,
            user_id,
            idempotency_key=ledger.charge_key(generation_id),
            generation_id=generation_id,
        )
    return generation_id


async def reconcile(temporal: Client) -> ReconcileReport:
    async with asyncio.timeout(RUN_TIMEOUT):
        _, report = await cli.reconcile_now(temporal)
    return report


async def test_reconciliation_refunds_credits_leaves_running_alone_and_reports(
    stack: Stack,
    http: httpx.AsyncClient,
    stand_in: httpx.AsyncClient,
    db: Pool,
    pushover: Pushover,
) -> None:
    user = await signup(http)
    uid = uuid.UUID(user.id)
    async with db.connection() as conn, conn.transaction():
        await ledger.grant(conn, uid, 10, idempotency_key=f"test-reconcile:{uid}")
    start = SIGNUP_TOKENS + 10 - 5  # five charges below
    failed = await ended_unrefunded(db, uid, "failed")
    cancelled = await ended_unrefunded(db, uid, "cancelled")
    # A generation still running (its row moved just now): none of the reconciler's.
    running = await insert_generation(db, uid, charged=True)
    async with db.connection() as conn:
        await conn.execute(
            "UPDATE generations SET status = 'running', step = 'animate' WHERE id = %s",
            (running,),
        )
    # A row that says failed while its workflow still runs (on a queue nobody polls):
    # its own settle refunds, so the reconciler leaves it.
    zombie = await ended_unrefunded(db, uid, "failed")
    temporal = await Client.connect(stack.cfg.temporal_address)
    workflow = await temporal.start_workflow(
        contract.WORKFLOW_NAME,
        BitBuddyInput(
            generation_id=str(zombie),
            user_id=user.id,
            prompt="a knight",
            photo_key="k",
            render=RenderSpec(),
            media_task_queue="nobody-polls",
        ),
        id=str(zombie),
        task_queue=f"nobody-polls-{uuid.uuid4().hex}",
    )
    # Failed just now: its settler may still be at work; left for a later run.
    young = await ended_unrefunded(db, uid, "failed", age_seconds=0)
    # Paid at Stripe an hour ago; its webhook never came.
    session_id = await open_session(user)
    paid = await stand_in.post(f"/_local/sessions/{session_id}/paid", params={"age_seconds": OLD})
    assert paid.is_success, paid.text
    # Paid just now: its webhook may be on its way; left for a later run.
    fresh = await open_session(user)
    assert (await stand_in.post(f"/_local/sessions/{fresh}/paid")).is_success
    assert await user.balance() == start
    try:
        report = await reconcile(temporal)

        assert {str(failed), str(cancelled)} <= set(report.refunded)
        assert not {str(running), str(zombie), str(young)} & set(report.refunded)
        assert session_id in report.credited and fresh not in report.credited
        assert report.stripe_checked and report.sessions_checked >= 1
        assert report.violations == []
        assert await ledger_kinds(db, failed) == ["charge", "refund"]
        assert await ledger_kinds(db, cancelled) == ["charge", "refund"]
        assert await ledger_kinds(db, running) == ["charge"]
        assert await ledger_kinds(db, zombie) == ["charge"]
        assert await ledger_kinds(db, young) == ["charge"]
        assert await purchases(db, fresh) == [] and await status_of(db, fresh) == "open"
        assert (await workflow.describe()).status == WorkflowExecutionStatus.RUNNING
        assert await purchases(db, session_id) == [PACK_TOKENS]
        assert await status_of(db, session_id) == "paid"
        # the two refunds and the purchase
        assert await user.balance() == start + 2 + PACK_TOKENS
        # The outcome that stood is kept: a failed one stays failed.
        assert (await user.generation(str(failed)))["status"] == "failed"
        assert (await user.generation(str(cancelled)))["status"] == "cancelled"

        # The owner: one reconciliation alert naming what was fixed.
        async with db.connection() as conn:
            cur = await conn.execute(
                "SELECT source_key FROM alerts WHERE kind = 'reconciliation'"
                " AND message LIKE %s AND message LIKE %s",
                (f"%{failed}%", f"%{session_id}%"),
            )
            rows = await cur.fetchall()
            [row] = rows
            alert = await alerts_repo.by_source(conn, row["source_key"])
        assert alert is not None and alert.kind == "reconciliation"
        assert str(cancelled) in alert.message and str(zombie) not in alert.message
        assert alert.title.startswith("Reconciliation: ")
        if alert.delivery == "sent":  # not suppressed by another reconciliation's alert
            [message] = pushover.about(session_id)
            assert message["title"] == alert.title and str(failed) in message["message"]

        # Again: nothing more refunded or credited, no new alert about them.
        again = await reconcile(temporal)
        assert not {str(failed), str(cancelled)} & set(again.refunded)
        assert session_id not in again.credited
        assert await ledger_kinds(db, failed) == ["charge", "refund"]
        assert await purchases(db, session_id) == [PACK_TOKENS]

        # The webhook arrives at last: recorded, credits nothing more.
        delivered = await stand_in.post(
            f"/_local/sessions/{session_id}/events",
            json={"type": "checkout.session.completed", "payment_status": "paid"},
        )
        assert delivered.is_success
        await all_delivered(stand_in, session_id, 1)
        assert await purchases(db, session_id) == [PACK_TOKENS]
        assert await user.balance() == start + 2 + PACK_TOKENS

        async with db.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) AS n FROM alerts WHERE kind = 'reconciliation'"
                " AND message LIKE %s",
                (f"%{session_id}%",),
            )
            counted = await cur.fetchone()
            assert counted is not None and counted["n"] == 1
            assert await ledger.check_invariant(conn) == []
    finally:
        await workflow.terminate(reason="test over")
        # Leave nothing for later sweeps or reconciliations to find (and alert about).
        async with db.connection() as conn:
            for left in (running, zombie, young):
                await settlement.settle(
                    conn,
                    left,
                    settlement.Ending("failed", "animate", "internal", "test over"),
                    settled_by="test",
                    reason="test over",
                )
        await stand_in.post(
            f"/_local/sessions/{fresh}/events",
            json={"type": "checkout.session.completed", "payment_status": "paid"},
        )


async def test_the_cli_reconciles_and_prints_its_report(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    status = await asyncio.wait_for(
        asyncio.to_thread(cli.main, ["reconcile", "--timeout", "2m"]), RUN_TIMEOUT
    )
    out, err = capsys.readouterr()
    assert out.startswith("reconciliation "), (out, err)
    assert "refunded " in out and "credited " in out
    assert status == (0 if "the ledger's invariant holds" in out else 1)


def test_the_report_says_when_it_fixed_something() -> None:
    assert not ReconcileReport().fixed_anything
    assert ReconcileReport(refunded=["g"]).fixed_anything
    assert ReconcileReport(credited=["cs"]).fixed_anything
    assert not ReconcileReport(violations=["v"]).fixed_anything
