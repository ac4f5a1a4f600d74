"""The provider cap holds when every worker is down for longer than the permit lease
while jobs wait at the provider.

The model server stands in for the provider; its ``max_in_flight`` per app counts a job
from its submission until its result is fetched, it fails or it is cancelled (a superset
of the time it is queued or running), so "never more than the cap" is checked over the
whole run, not only at the moments the test samples.

It counts every animate submission and every permit, whoever's, so it starts only once
earlier tests' work is over (``_wait_for_earlier_work``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import timedelta

import httpx
from psycopg_pool import AsyncConnectionPool
from temporalio.client import Client

from activities.permits import get_globally_cached_semaphore
from activities.providers.local import APPS
from billing import ledger
from infra import supervisor
from tests.conftest import TEST_ENV, Stack, ledger_kinds, permits_held
from tests.support.client import signup
from tests.support.photos import photo
from tests.support.steps import STEP_APPS
from workflows import contract

CAP = int(TEST_ENV["BITBUDDIES_MODEL_CONCURRENCY"])
ANIMATE = APPS[contract.ANIMATE.name]
# The workers in this test lease permits this briefly (the session's default is 60 s).
LEASE_SECONDS = 3
# The first CAP animate jobs run this long: through the outage and the recovery below.
HOLD_SECONDS = 35
# activities/models.py: a dead worker's submit is retried once its 10 s heartbeat timeout
# has passed (plus a 1 s retry interval); its polls after 5 s. After this long every
# activity the dead worker ran is waiting for a new worker.
OUTAGE_SECONDS = 13


async def _wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


def _start_worker(stack: Stack, lease_seconds: float) -> None:
    """A new worker process in the stack's place, leasing permits for ``lease_seconds``."""
    stack.worker.stop()
    worker = supervisor.worker(stack.cfg, "interactive")
    worker.env = {**worker.env, "BITBUDDIES_MODEL_PERMIT_TTL_SECONDS": str(lease_seconds)}
    worker.start()
    stack.worker = worker


async def _wait_for_earlier_work(
    stack: Stack,
    db: AsyncConnectionPool,  # type: ignore[type-arg]
    models: httpx.AsyncClient,
    timeout: float = 300.0,
) -> None:
    """Wait until no generation of an earlier test still runs, no job is queued or running
    at the model server and no provider permit is held.

    Earlier tests may leave generations running (many check only the 202) and model jobs
    going (a job of a terminated workflow runs out its injected delay). Such work would
    race this test: its animate jobs, submitted before the gate is shut, would be counted
    as having passed it; after, they would compete for the permits and for the delay
    faults meant for this test's jobs, and occupy the model server's two workers.
    """
    temporal = await Client.connect(stack.cfg.temporal_address)
    running = f'WorkflowType="{contract.WORKFLOW_NAME}" AND ExecutionStatus="Running"'

    async def load() -> dict[str, int]:
        response = await models.get("/_local/load")
        response.raise_for_status()
        counts: dict[str, int] = response.json()
        return counts

    async def quiet() -> bool:
        return (
            (await temporal.count_workflows(running)).count == 0
            and await load() == {"queued": 0, "running": 0}
            and await permits_held(db) == 0
        )

    deadline = time.monotonic() + timeout
    while not await quiet():
        if time.monotonic() > deadline:
            workflows = [w.id async for w in temporal.list_workflows(running)]
            raise AssertionError(
                f"earlier tests' work still going after {timeout:.0f} s: BitBuddy workflows"
                f" {workflows}, model server {await load()}, permits {await permits_held(db)}"
            )
        await asyncio.sleep(0.5)


async def _sample_in_flight(models: httpx.AsyncClient, peaks: Counter[str]) -> None:
    """Record the most jobs each app ever reported in flight, until cancelled."""
    while True:
        stats = (await models.get("/_local/stats")).json()
        for app, counts in stats.items():
            peaks[app] = max(peaks[app], counts["in_flight"], counts["max_in_flight"])
        await asyncio.sleep(0.1)


async def test_a_lease_outlived_by_its_queued_job_is_not_handed_to_another_job(
    stack: Stack,
    http: httpx.AsyncClient,
    db: AsyncConnectionPool,  # type: ignore[type-arg]
    models: httpx.AsyncClient,
) -> None:
    await _wait_for_earlier_work(stack, db, models)
    _start_worker(stack, LEASE_SECONDS)
    # Records, stats and faults from here on (the fixture's reset came before the wait).
    (await models.post("/_local/reset")).raise_for_status()
    peaks: Counter[str] = Counter()
    sampler = asyncio.create_task(_sample_in_flight(models, peaks))
    # The test holds every animate permit until all CAP + 1 generations wait for one. The
    # model server runs StackConfig.model_workers (2, the cap) jobs at once, so while the
    # CAP held animate jobs run nothing else runs there: a generation whose segment-image
    # was still queued behind them would reach animate only after HOLD_SECONDS. Left to
    # the workflows' timing, that happened in about one run in three.
    animate = get_globally_cached_semaphore(name=ANIMATE, max_concurrency=CAP)
    gate = [f"test-gate:{uuid.uuid4()}" for _ in range(CAP)]
    try:
        for holder in gate:  # fails if an animate permit is held already
            assert await animate.try_acquire(db, holder, timedelta(minutes=15))
        fault = {"app": ANIMATE, "kind": "delay", "times": CAP, "seconds": HOLD_SECONDS}
        (await models.post("/_local/faults", json=fault)).raise_for_status()
        users = [await signup(http) for _ in range(CAP + 1)]
        responses = [await u.generate(photo("astronaut.png")) for u in users]
        assert [r.status_code for r in responses] == [202] * (CAP + 1)
        ids = [r.json()["id"] for r in responses]
        streams = [asyncio.create_task(u.events(i)) for u, i in zip(users, ids, strict=True)]

        async def at_animate() -> int:
            async with db.connection() as conn:
                cur = await conn.execute(
                    "SELECT count(*) AS n FROM generations WHERE id = ANY(%s) AND step = %s",
                    ([uuid.UUID(i) for i in ids], contract.ANIMATE.name),
                )
                row = await cur.fetchone()
            return int(row["n"]) if row else 0

        async def all_wait_for_animate() -> bool:
            return await at_animate() == CAP + 1

        await _wait_for(all_wait_for_animate, timeout=240)
        records = (await models.get("/_local/requests")).json()
        assert [r for r in records if r["app"] == ANIMATE] == []  # nobody passed the gate
        for holder in gate:
            await animate.release(db, holder)

        async def one_more_waits_for_animate() -> bool:
            records = (await models.get("/_local/requests")).json()
            running = [r for r in records if r["app"] == ANIMATE and r["status"] == "IN_PROGRESS"]
            return len(running) == CAP and await at_animate() == CAP + 1

        # CAP animate jobs run at the provider holding every permit; one more generation
        # waits for a permit inside its submit.
        await _wait_for(one_more_waits_for_animate, timeout=60)
        stack.worker.kill()  # SIGKILL: no cleanup; its polls and its waiting submit die

        await asyncio.sleep(OUTAGE_SECONDS)
        async with db.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) AS n FROM provider_permits WHERE expires_at < now()"
            )
            row = await cur.fetchone()
        assert row is not None and row["n"] == CAP  # both leases ran out while nobody renewed

        # The provider answers nothing while the new worker picks the work up, so the
        # waiting submit, which needs no provider call to take a permit, goes first: the
        # resumed polls are held in their status check until then.
        (await models.post("/_local/stall", json={"seconds": 60})).raise_for_status()
        _start_worker(stack, LEASE_SECONDS)

        async def polls_held() -> bool:
            return bool((await models.get("/_local/stall")).json()["waiting"] >= CAP)

        await _wait_for(polls_held, timeout=30)
        await asyncio.sleep(2)  # well under the polls' 5 s heartbeat timeout
        (await models.post("/_local/stall", json={"seconds": 0})).raise_for_status()

        results = await asyncio.wait_for(asyncio.gather(*streams), 240)
    finally:
        for holder in gate:
            await animate.release(db, holder)
        sampler.cancel()
        await models.post("/_local/stall", json={"seconds": 0})
        stack.restart_worker()  # the session's own settings again

    stats = (await models.get("/_local/stats")).json()
    for app, counts in stats.items():
        peaks[app] = max(peaks[app], counts["max_in_flight"])
    assert {app: n for app, n in peaks.items() if n > CAP} == {}  # never above the cap
    assert peaks[ANIMATE] == CAP  # the cap was reached, so it was tested

    assert [events[-1].event for events in results] == ["completed"] * (CAP + 1), [
        events[-1] for events in results
    ]
    requests = (await models.get("/_local/requests")).json()
    for generation_id, events in zip(ids, results, strict=True):
        mine = Counter(r["app"] for r in requests if generation_id in str(r["arguments"]))
        steps = {e.data["step"] for e in events} & STEP_APPS.keys()
        assert mine == Counter(STEP_APPS[step] for step in steps)  # one submission a step
    for user, generation_id in zip(users, ids, strict=True):
        # The ledger: one charge, no refund of a completed generation, and the balance
        # is the sum of the entries.
        assert await ledger_kinds(db, generation_id) == ["charge"]
        async with db.connection() as conn:
            cur = await conn.execute(
                "SELECT coalesce(sum(delta), 0) AS total FROM ledger_entries WHERE user_id = %s",
                (uuid.UUID(user.id),),
            )
            row = await cur.fetchone()
            assert row is not None
            assert await ledger.balance(conn, uuid.UUID(user.id)) == row["total"]
        assert await user.balance() == int(TEST_ENV["BITBUDDIES_SIGNUP_TOKENS"]) - 1
    assert await permits_held(db) == 0
