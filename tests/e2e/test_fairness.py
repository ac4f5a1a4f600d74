"""Task queue priority and fairness, through the real stack: one user's burst does not
starve another's, and a bulk generation waits behind interactive ones, at the task
queues and at the models' permits.

Each generation's workflow starts (workflows/lifecycle.py) with a priority (interactive
2, batch 4) and its owner's id as fairness key, which its activities inherit, the
transcode on the media queue among them. The generations here send their transcodes to a
media queue of their own, with no worker at first, so all of them back up there. A media
worker with one slot then takes them one by one, in the order the server hands them out:
first-come-first-served would run user A's three before user B's one and the bulk
generation (started first) before everyone's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid

import httpx
from psycopg_pool import AsyncConnectionPool
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle

from infra import supervisor
from infra.database import records
from infra.settings import Settings
from infra.storage import storage_from_settings
from tests.conftest import Stack, insert_generation, permits_held
from tests.support.client import signup
from tests.support.faults import drain_task_queue, provider_requests, wait_until
from tests.support.photos import photo
from tests.support.steps import APPS
from workflows import contract, lifecycle


async def _start(
    db: AsyncConnectionPool,  # type: ignore[type-arg]
    temporal: Client,
    settings: Settings,
    user_id: str,
    kind: lifecycle.Kind,
) -> WorkflowHandle:  # type: ignore[type-arg]
    """A charged generation with its photo stored, started as the API (or a bulk job)
    starts one."""
    generation_id = uuid.uuid4()
    photo_key = f"generations/{generation_id}/input/photo.png"
    await storage_from_settings(settings).write_bytes(
        photo_key, photo("astronaut.png"), content_type="image/png"
    )
    await insert_generation(
        db, uuid.UUID(user_id), generation_id=generation_id, photo_key=photo_key, charged=True
    )
    async with db.connection() as conn:
        generation = await records.generation(conn, generation_id)
    assert generation is not None
    await lifecycle.start_workflow(temporal, settings, generation, kind)
    return temporal.get_workflow_handle(str(generation_id))


async def _waiting_for_transcode(handles: list[WorkflowHandle], timeout: float = 240) -> None:  # type: ignore[type-arg]
    """Until every workflow's transcode is scheduled (and, with no worker, waits)."""
    deadline = time.monotonic() + timeout
    while True:
        descriptions = await asyncio.gather(*(h.describe() for h in handles))
        pending = [
            [a.activity_type.name for a in d.raw_description.pending_activities]
            for d in descriptions
        ]
        if all(contract.TRANSCODE in names for names in pending):
            return
        assert time.monotonic() < deadline, pending
        await asyncio.sleep(0.2)


async def _transcode_finished_at(handle: WorkflowHandle) -> float:  # type: ignore[type-arg]
    """When the workflow's transcode completed (server time): with one slot, the
    transcodes run one after the other, so this orders them as they were handed out."""
    history = await handle.fetch_history()
    transcodes = {
        e.event_id
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == contract.TRANSCODE
    }
    (done,) = (
        e
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
        and e.activity_task_completed_event_attributes.scheduled_event_id in transcodes
    )
    return done.event_time.ToDatetime().timestamp()


async def test_a_burst_of_one_user_does_not_starve_another_and_bulk_waits(
    stack: Stack,
    http: httpx.AsyncClient,
    db: AsyncConnectionPool,  # type: ignore[type-arg]
) -> None:
    media_queue = f"fairness-media-{uuid.uuid4().hex[:8]}"
    # The session's interactive worker stands in for the batch pool (the same workflow
    # and activities): only the priority the bulk generation starts with differs.
    base = Settings()
    settings = base.model_copy(
        update={"media_task_queue": media_queue, "batch_task_queue": base.task_queue}
    )
    temporal = await Client.connect(stack.cfg.temporal_address)
    a, b, bulk = [await signup(http) for _ in range(3)]

    # A bulk generation first, then user A's burst of three; all reach their transcode.
    first = [await _start(db, temporal, settings, bulk.id, "batch")]
    first += [await _start(db, temporal, settings, a.id, "interactive") for _ in range(3)]
    await _waiting_for_transcode(first)
    # Then user B's one, whose transcode is queued last of all.
    late = await _start(db, temporal, settings, b.id, "interactive")
    await _waiting_for_transcode([late])

    # One media worker with one slot on that queue takes the backlog one task at a time.
    cfg = dataclasses.replace(
        stack.cfg,
        extra_env={
            **stack.cfg.extra_env,
            "BITBUDDIES_MEDIA_TASK_QUEUE": media_queue,
            "BITBUDDIES_WORKER_MEDIA_ACTIVITIES": "1",
        },
    )
    media = supervisor.worker(cfg, "media", instance=9)
    try:
        await asyncio.to_thread(media.start)
        handles = [*first, late]
        async with asyncio.timeout(180):
            await asyncio.gather(*(h.result() for h in handles))
    finally:
        await asyncio.to_thread(media.stop)

    finished = dict(
        zip(
            ["bulk", "a1", "a2", "a3", "b"],
            await asyncio.gather(*(_transcode_finished_at(h) for h in handles)),
            strict=True,
        )
    )
    order = sorted(finished, key=finished.__getitem__)
    # Fairness: B's one goes right after A's first, not behind A's whole burst.
    assert order.index("b") <= 1, order
    # Priority: the bulk generation, though first in the queue, goes after every
    # interactive one.
    assert order[-1] == "bulk", order


async def test_a_bulk_job_leaves_interactive_generations_their_model_permits(
    stack: Stack,
    http: httpx.AsyncClient,
    models: httpx.AsyncClient,
    db: AsyncConnectionPool,  # type: ignore[type-arg]
) -> None:
    """With two permits per model and one kept for interactive generations, a bulk job's
    second generation waits for the model while an interactive one, started after it,
    gets the permit kept for it at once."""
    nsfw = APPS[contract.NSFW_FILTER.name]
    assert Settings().model_concurrency == 2 and Settings().model_permits_kept_for_interactive == 1
    await wait_until(lambda: _no_permits_held(db), timeout=120)  # earlier tests' jobs gone
    batch_queue = f"fairness-batch-{uuid.uuid4().hex[:8]}"
    settings = Settings().model_copy(update={"batch_task_queue": batch_queue})
    cfg = dataclasses.replace(
        stack.cfg, extra_env={**stack.cfg.extra_env, "BITBUDDIES_BATCH_TASK_QUEUE": batch_queue}
    )
    batch = supervisor.worker(cfg, "batch")
    temporal = await Client.connect(stack.cfg.temporal_address)
    bulk_owner = await signup(http)
    held = {"app": nsfw, "kind": "delay", "times": 2, "seconds": 8}
    (await models.post("/_local/faults", json=held)).raise_for_status()
    try:
        await asyncio.to_thread(batch.start)
        first = await _start(db, temporal, settings, bulk_owner.id, "batch")
        second = await _start(db, temporal, settings, bulk_owner.id, "batch")

        async def nsfw_jobs_of(handle: WorkflowHandle) -> int:  # type: ignore[type-arg]
            return sum(
                r["app"] == nsfw and handle.id in str(r["arguments"])
                for r in await provider_requests(models)
            )

        async def one_bulk_job_in_flight() -> bool:
            return await nsfw_jobs_of(first) + await nsfw_jobs_of(second) == 1

        await wait_until(one_bulk_job_in_flight, timeout=60)
        await asyncio.sleep(1.5)  # the other one tries for a permit, and waits
        assert await one_bulk_job_in_flight()
        assert await permits_held(db) == 1

        user = await signup(http)
        started = await user.generate(photo("astronaut.png"))
        assert started.status_code == 202, started.text
        interactive = temporal.get_workflow_handle(started.json()["id"])

        async def interactive_submitted() -> bool:
            return await nsfw_jobs_of(interactive) == 1

        await wait_until(interactive_submitted, timeout=20)
        # ...while the bulk job's second generation still waits (the first is held 8 s).
        assert await one_bulk_job_in_flight()

        async with asyncio.timeout(240):
            await asyncio.gather(first.result(), second.result(), interactive.result())
        await drain_task_queue(stack.cfg.temporal_address, batch_queue)
    finally:
        await asyncio.to_thread(batch.stop)


async def _no_permits_held(db: AsyncConnectionPool) -> bool:  # type: ignore[type-arg]
    return await permits_held(db) == 0
