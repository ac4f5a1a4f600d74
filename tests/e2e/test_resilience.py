"""Crashes and load: a killed worker resumes without resubmitting; the provider cap holds."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from datetime import timedelta

import httpx
import psycopg
from psycopg_pool import AsyncConnectionPool
from temporalio.client import Client

from activities.providers.local import APPS
from infra.database import records
from infra.settings import Settings
from infra.storage import storage_from_settings
from tests.conftest import Stack, insert_generation, ledger_kinds, permits_held
from tests.support.client import User, signup
from tests.support.photos import photo
from tests.support.steps import STEP_APPS
from workflows import contract
from workflows.contract import ANIMATE

ALL_APPS = sorted(set(STEP_APPS.values()))


async def _wait_for(predicate, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_a_worker_killed_mid_poll_resumes_on_a_new_worker_without_resubmitting(
    stack: Stack,
    http: httpx.AsyncClient,
    db: AsyncConnectionPool,  # type: ignore[type-arg]
    models: httpx.AsyncClient,
) -> None:
    user, generation_id = await _start_slow_generation(http, models, seconds=6)
    stream = asyncio.create_task(user.events(generation_id))
    stack.worker.kill()  # SIGKILL: no cleanup, permits and polls die with it

    async def reported_missing() -> bool:
        health = await http.get("/healthz")
        # Only the interactive pool's process died: the media and housekeeping workers run on.
        return health.status_code == 503 and health.json()["missing"] == ["worker"]

    await _wait_for(reported_missing, timeout=30)  # the dead worker's beats go stale
    stack.restart_worker()

    events = await asyncio.wait_for(stream, 180)
    assert events[-1].event == "completed", events[-1]
    requests = (await models.get("/_local/requests")).json()
    mine = Counter(r["app"] for r in requests if generation_id in str(r["arguments"]))
    steps = {e.data["step"] for e in events} & STEP_APPS.keys()
    assert mine == Counter(STEP_APPS[step] for step in steps)  # exactly one submission a step
    assert (await http.get("/healthz")).status_code == 200
    assert await permits_held(db) == 0  # the new worker released what the dead one took


async def test_twenty_generations_with_a_cap_of_two_never_exceed_two_jobs_in_flight(
    stack: Stack, http: httpx.AsyncClient, models: httpx.AsyncClient
) -> None:
    users = [await signup(http) for _ in range(10)]
    responses = await asyncio.gather(
        *(u.generate(photo("astronaut.png")) for u in users for _ in range(2))
    )
    assert [r.status_code for r in responses] == [202] * 20
    owners = [u for u in users for _ in range(2)]
    streams = await asyncio.gather(
        *(u.events(r.json()["id"]) for u, r in zip(owners, responses, strict=True))
    )
    assert [s[-1].event for s in streams] == ["completed"] * 20
    stats = (await models.get("/_local/stats")).json()
    for app in ALL_APPS:
        assert stats[app]["submitted"] >= 20, app
        assert 1 <= stats[app]["max_in_flight"] <= 2, (app, stats[app])


async def test_a_generation_charged_but_never_started_is_started_by_the_sweeper(
    stack: Stack,
    http: httpx.AsyncClient,
    db: AsyncConnectionPool,  # type: ignore[type-arg]
) -> None:
    # What the API leaves behind if it dies right after committing the charge: a queued,
    # charged generation with its photo stored, and no workflow.
    user = await signup(http)
    generation_id = uuid.uuid4()
    photo_key = f"generations/{generation_id}/input/photo.png"
    await storage_from_settings(Settings()).write_bytes(
        photo_key, photo("astronaut.png"), content_type="image/png"
    )
    await insert_generation(
        db,
        uuid.UUID(user.id),
        generation_id=generation_id,
        photo_key=photo_key,
        charged=True,
        age_seconds=3600,
    )

    events = await asyncio.wait_for(user.events(str(generation_id)), 120)
    assert events[-1].event == "completed", events[-1]
    assert await user.balance() == 2  # charged once, delivered, not refunded
    assert await ledger_kinds(db, generation_id) == ["charge"]


async def _animate_statuses(models: httpx.AsyncClient) -> list[str]:
    """The model server's record of every animate job, oldest first."""
    requests = (await models.get("/_local/requests")).json()
    return [r["status"] for r in requests if r["app"] == APPS[ANIMATE.name]]


async def _start_slow_generation(
    http: httpx.AsyncClient, models: httpx.AsyncClient, seconds: float = 15
) -> tuple[User, str]:
    """A generation whose animate job runs for a while; returns once that job runs."""
    fault = {"app": APPS[ANIMATE.name], "kind": "delay", "times": 1, "seconds": seconds}
    (await models.post("/_local/faults", json=fault)).raise_for_status()
    user = await signup(http)
    generation_id = (await user.generate(photo("astronaut.png"))).json()["id"]

    async def animating() -> bool:
        return "IN_PROGRESS" in await _animate_statuses(models)

    await _wait_for(animating)
    return user, generation_id


async def test_a_cancelled_generation_stops_the_job_refunds_and_frees_its_permit(
    stack: Stack,
    http: httpx.AsyncClient,
    db: AsyncConnectionPool,  # type: ignore[type-arg]
    models: httpx.AsyncClient,
) -> None:
    user, generation_id = await _start_slow_generation(http, models)
    temporal = await Client.connect(stack.cfg.temporal_address)
    await temporal.get_workflow_handle(generation_id).cancel()

    events = await asyncio.wait_for(user.events(generation_id), 60)
    assert events[-1].event == "cancelled"
    assert events[-1].data["status"] == "cancelled" and events[-1].data["refunded"] is True
    assert (await user.generation(generation_id))["status"] == "cancelled"
    assert await user.balance() == 3
    assert await _animate_statuses(models) == ["CANCELLED"]  # the provider's job was stopped
    assert await permits_held(db) == 0


async def test_a_terminated_generation_is_settled_by_the_sweeper(
    stack: Stack,
    http: httpx.AsyncClient,
    db: AsyncConnectionPool,  # type: ignore[type-arg]
    models: httpx.AsyncClient,
) -> None:
    user, generation_id = await _start_slow_generation(http, models)
    assert await permits_held(db) == 1
    temporal = await Client.connect(stack.cfg.temporal_address)
    # Terminate skips the workflow's own cleanup: no refund, no terminal event.
    await temporal.get_workflow_handle(generation_id).terminate(reason="operator")
    async with db.connection() as conn:  # as if the sweeper's patience had run out
        await conn.execute(
            "UPDATE generations SET updated_at = now() - interval '1 hour' WHERE id = %s",
            (uuid.UUID(generation_id),),
        )

    events = await asyncio.wait_for(user.events(generation_id), 60)
    assert events[-1].event == "failed"
    assert events[-1].data["refunded"] is True
    assert (await user.generation(generation_id))["status"] == "failed"
    assert await user.balance() == 3
    assert await ledger_kinds(db, generation_id) == ["charge", "refund"]

    async def stopped_then_freed() -> bool:  # right after the terminal event, same sweep
        # nobody would fetch its result
        return await _animate_statuses(models) == ["CANCELLED"] and await permits_held(db) == 0

    await _wait_for(stopped_then_freed, timeout=10)


async def test_the_sweeper_never_tells_a_user_of_a_refund_it_did_not_make(
    stack: Stack,
    http: httpx.AsyncClient,
    db: AsyncConnectionPool,  # type: ignore[type-arg]
) -> None:
    # A generation marked running whose workflow does not exist, and that was never
    # charged (a row an operator or a test wrote): the sweep ends it, refunding nothing.
    user = await signup(http)
    generation_id = await insert_generation(db, uuid.UUID(user.id), age_seconds=3600)
    async with db.connection() as conn:
        await conn.execute(
            "UPDATE generations SET status = 'running', step = 'animate' WHERE id = %s",
            (generation_id,),
        )

    events = await asyncio.wait_for(user.events(str(generation_id)), 60)
    assert events[-1].event == "failed" and events[-1].data["refunded"] is False
    assert events[-1].data["message"] == contract.INTERNAL_FAILURE  # no "refunded" in it
    assert (await user.generation(str(generation_id)))["error"] == contract.INTERNAL_FAILURE
    assert await user.balance() == 3
    assert await ledger_kinds(db, generation_id) == []


async def test_a_job_the_sweeper_cannot_stop_keeps_its_permit_until_it_can(
    stack: Stack,
    http: httpx.AsyncClient,
    db: AsyncConnectionPool,  # type: ignore[type-arg]
    models: httpx.AsyncClient,
) -> None:
    """A permit of a job that may still run at the provider is never handed on: with the
    model server down, the sweeper settles the generation but keeps the permit, and
    frees it once the job can be stopped."""
    user, generation_id = await _start_slow_generation(http, models, seconds=30)
    temporal = await Client.connect(stack.cfg.temporal_address)
    await temporal.get_workflow_handle(generation_id).terminate(reason="operator")
    stack.model_server.kill()
    stack.model_server.stop()
    try:
        async with db.connection() as conn:
            await conn.execute(
                "UPDATE generations SET updated_at = now() - interval '1 hour' WHERE id = %s",
                (uuid.UUID(generation_id),),
            )
        events = await asyncio.wait_for(user.events(generation_id), 60)
        assert events[-1].event == "failed" and events[-1].data["refunded"] is True
        # Past the sweeper's patience with the provider (5 s), and a few sweeps more.
        await asyncio.sleep(8)
        assert await permits_held(db) == 1
    finally:
        stack.model_server.start()

    async def freed() -> bool:
        return await permits_held(db) == 0

    await _wait_for(freed, timeout=30)
    # Resumed from its queue on disk after the restart, then stopped (or already done).
    assert (await _animate_statuses(models))[-1] in ("CANCELLED", "COMPLETED")
    assert await ledger_kinds(db, generation_id) == ["charge", "refund"]


async def test_the_sweeper_pages_past_generations_that_are_still_running(
    http: httpx.AsyncClient,
    db: AsyncConnectionPool,  # type: ignore[type-arg]
) -> None:
    """More stale generations than one page: every one is reached, stalest first."""
    user_id = uuid.UUID((await signup(http)).id)
    async with db.connection() as conn, conn.transaction():
        # Uncommitted, so the live sweeper never sees (or settles) these rows.
        ours = []
        for age in range(5):
            generation_id = uuid.uuid4()
            await conn.execute(
                "INSERT INTO generations (id, user_id, prompt, photo_key, status, updated_at)"
                " VALUES (%s, %s, 'a knight', 'k', 'running', now() - make_interval(days => %s))",
                (generation_id, user_id, 100 - age),
            )
            ours.append(generation_id)
        seen: list[uuid.UUID] = []
        page: list[records.Generation] = []
        for _ in range(100):  # a cursor that did not advance would loop for ever
            page = await records.stale_open_generations(
                conn, timedelta(hours=1), after=page[-1] if page else None, limit=2
            )
            seen += [g.id for g in page if g.user_id == user_id]
            if len(page) < 2:
                break
        raise psycopg.Rollback()  # leaves the block, nothing committed

    assert seen == ours
