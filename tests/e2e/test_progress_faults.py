"""Progress is a side effect: Redis going away, or coming back empty, delays events and
fails nothing. No stream misses its terminal event or is given an id that earlier named
a different event. Faults are real: Redis is SIGKILLed (the test stack's Redis keeps
nothing on disk, so it comes back empty)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter

import httpx
from psycopg_pool import AsyncConnectionPool

from activities.providers.local import APPS
from tests.conftest import Stack
from tests.support.client import Event, User
from tests.support.faults import (
    assert_ledger_consistent,
    finished,
    provider_requests,
    start_generations,
    submissions_of,
    wait_until,
)
from tests.support.steps import STEP_APPS
from workflows import contract

Pool = AsyncConnectionPool  # type: ignore[type-arg]
ONE_SUBMISSION_PER_STEP = Counter(STEP_APPS.values())
ANIMATE = APPS[contract.ANIMATE.name]
OUTAGE_SECONDS = 60.0


async def _slow_animation(models: httpx.AsyncClient, jobs: int) -> None:
    """Each of the next ``jobs`` animations takes 3 s more, so the fault lands mid-run."""
    body = {"app": ANIMATE, "kind": "delay", "times": jobs, "seconds": 3}
    (await models.post("/_local/faults", json=body)).raise_for_status()


async def _first_events(user: User, generation_id: str, n: int) -> list[Event]:
    """Read a stream's first ``n`` events, then leave (as a closed browser tab does)."""
    got: list[Event] = []
    async with contextlib.aclosing(user.follow(generation_id)) as stream:
        async for event in stream:
            got.append(event)
            if len(got) == n:
                break
    return got


def _assert_whole_log(events: list[Event]) -> None:
    """Ids 1, 2, 3, ... with no gap or repeat, ending in the one terminal event."""
    assert [e.id for e in events] == list(range(1, len(events) + 1)), [e.id for e in events]
    assert [e.event for e in events[:-1]] == ["progress"] * (len(events) - 1)
    assert events[-1].event == "completed", events[-1]


async def test_redis_restarted_empty_costs_no_event_and_reuses_no_id(
    stack: Stack, http: httpx.AsyncClient, db: Pool, models: httpx.AsyncClient
) -> None:
    await _slow_animation(models, 3)
    started = await start_generations(http, 3)
    # One client follows each generation throughout; another reads its first events, goes
    # away, and comes back with its Last-Event-ID after Redis has lost everything.
    followers = [asyncio.create_task(user.watch(g)) for user, g in started]
    early = [await _first_events(user, g, 2) for user, g in started]
    stack.crash_redis()
    await asyncio.sleep(1.0)
    stack.start_redis()
    returning = [
        asyncio.create_task(user.watch(g, last_event_id=seen[-1].id))
        for (user, g), seen in zip(started, early, strict=True)
    ]
    ids = [g for _, g in started]
    assert await finished(db, ids) == dict.fromkeys(ids, "completed")
    followed = await asyncio.wait_for(asyncio.gather(*followers), 60)
    returned = await asyncio.wait_for(asyncio.gather(*returning), 60)
    records = await provider_requests(models)
    for (user, generation_id), one, before, after in zip(
        started, followed, early, returned, strict=True
    ):
        whole = await asyncio.wait_for(user.events(generation_id), 30)  # read after the end
        _assert_whole_log(whole)
        # Every client saw the same events under the same ids: an id names one event.
        assert one == whole
        assert before + after == whole
        assert submissions_of(records, generation_id) == ONE_SUBMISSION_PER_STEP
    await assert_ledger_consistent(db, [user for user, _ in started])


async def test_a_minute_without_redis_fails_no_generation_and_progress_keeps_flowing(
    stack: Stack, http: httpx.AsyncClient, db: Pool, models: httpx.AsyncClient
) -> None:
    await _slow_animation(models, 3)
    started = await start_generations(http, 3)
    followers = [asyncio.create_task(user.watch(g)) for user, g in started]

    async def all_submitted() -> bool:
        records = await provider_requests(models)
        return all(submissions_of(records, g) for _, g in started)

    await wait_until(all_submitted)
    stack.crash_redis()
    down_since = time.monotonic()
    try:
        # Generations caught mid-run finish, and every stream gets every event, from the
        # record alone; so do generations started, and streams opened, during the outage.
        followed = await asyncio.wait_for(asyncio.gather(*followers), 240)
        later = await start_generations(http, 2)
        followed += await asyncio.wait_for(
            asyncio.gather(*(user.watch(g) for user, g in later)), 240
        )
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_since)))
    finally:
        stack.start_redis()
    everyone = started + later
    ids = [g for _, g in everyone]
    assert await finished(db, ids, timeout=30) == dict.fromkeys(ids, "completed")
    records = await provider_requests(models)
    for (user, generation_id), events in zip(everyone, followed, strict=True):
        _assert_whole_log(events)
        assert events == await asyncio.wait_for(user.events(generation_id), 30)
        assert submissions_of(records, generation_id) == ONE_SUBMISSION_PER_STEP
    await assert_ledger_consistent(db, [user for user, _ in everyone])
