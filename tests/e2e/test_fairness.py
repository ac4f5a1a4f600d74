"""Task queue priority and fairness, through the real stack: one user's burst does not
starve another's, and a bulk generation waits behind interactive ones.

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
from tests.conftest import Stack, insert_generation
from tests.support.client import signup
from tests.support.photos import photo
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
