"""Transient failures are not the user's problem: a restarted API or model server, or a
job that cannot fetch its inputs, costs a resubmission, not a generation. Content
refusals are never resubmitted. Faults are real: processes are stopped and killed."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from typing import Any

import httpx
from psycopg_pool import AsyncConnectionPool
from temporalio.client import Client
from temporalio.worker import Replayer

from api.client import User, signup
from tests.conftest import FIXTURES, Stack, permits_held, photo
from workflows.bitbuddy import TRANSIENT_RESUBMIT_PATCH, BitBuddyWorkflow

TERMINAL = ("completed", "failed", "cancelled")
RESUBMITS = 3  # the default of Settings.model_resubmits, which the tests run with
CARTOONIFY = "bitbuddies/cartoonify"
ANIMATE = "bitbuddies/animate"
ANALYZE = "bitbuddies/analyze"
NSFW = "bitbuddies/nsfw-filter"

Pool = AsyncConnectionPool  # type: ignore[type-arg]


async def _fault(
    models: httpx.AsyncClient, app: str, kind: str, times: int, seconds: float = 0
) -> None:
    body = {"app": app, "kind": kind, "times": times, "seconds": seconds}
    (await models.post("/_local/faults", json=body)).raise_for_status()


async def _records(models: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await models.get("/_local/requests")
    response.raise_for_status()
    records: list[dict[str, Any]] = response.json()
    return records


async def _wait_until(predicate, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def _start(http: httpx.AsyncClient, n: int) -> list[tuple[User, str]]:
    started = []
    for _ in range(n):
        user = await signup(http)
        response = await user.generate(photo("astronaut.png"))
        assert response.status_code == 202, response.text
        started.append((user, response.json()["id"]))
    return started


async def _statuses(db: Pool, generation_ids: list[str]) -> dict[str, str]:
    async with db.connection() as conn:
        cur = await conn.execute(
            "SELECT id::text AS id, status FROM generations WHERE id = ANY(%s)",
            ([uuid.UUID(g) for g in generation_ids],),
        )
        return {row["id"]: row["status"] for row in await cur.fetchall()}


async def _finished(db: Pool, generation_ids: list[str], timeout: float = 240) -> dict[str, str]:
    """Wait (reading the database, so an API restart cannot interrupt it) until every
    generation has ended; return their statuses."""

    async def ended() -> bool:
        statuses = await _statuses(db, generation_ids)
        return all(statuses.get(g) in TERMINAL for g in generation_ids)

    await _wait_until(ended, timeout)
    return await _statuses(db, generation_ids)


async def _assert_ledger_consistent(db: Pool, users: list[User]) -> None:
    """Each balance is the sum of its entries; a charge is refunded at most once; every
    failed (or cancelled) generation is refunded exactly once and no completed one is;
    and no provider permit is left held."""
    async with db.connection() as conn:
        for user in users:
            uid = uuid.UUID(user.id)
            cur = await conn.execute(
                "SELECT (SELECT tokens FROM balances WHERE user_id = %s) AS balance,"
                " (SELECT coalesce(sum(delta), 0) FROM ledger_entries WHERE user_id = %s) AS total",
                (uid, uid),
            )
            row = await cur.fetchone()
            assert row is not None and row["balance"] == row["total"], (user.id, row)
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
        cur = await conn.execute(
            "SELECT count(*) AS n FROM ledger_entries WHERE refund_of IS NOT NULL"
            " GROUP BY refund_of HAVING count(*) > 1"
        )
        assert await cur.fetchall() == []
    assert await permits_held(db) == 0


async def _assert_replays(stack: Stack, generation_id: str) -> None:
    """The recorded history (resubmissions included) replays on the workflow code."""
    temporal = await Client.connect(stack.cfg.temporal_address)
    history = await temporal.get_workflow_handle(generation_id).fetch_history()
    markers = [e for e in history.events if e.HasField("marker_recorded_event_attributes")]
    assert markers, "a resubmission is recorded behind the transient-resubmit patch"
    assert TRANSIENT_RESUBMIT_PATCH in str(markers[0].marker_recorded_event_attributes)
    await Replayer(workflows=[BitBuddyWorkflow]).replay_workflow(history)


def _per_generation(records: list[dict[str, Any]], generation_id: str) -> Counter[str]:
    """Submissions the model server saw for one generation (its storage keys name it)."""
    return Counter(r["app"] for r in records if generation_id in str(r["arguments"]))


async def test_an_api_restart_while_jobs_download_their_inputs_fails_no_generation(
    stack: Stack,
    http: httpx.AsyncClient,
    db: Pool,
    models: httpx.AsyncClient,
) -> None:
    # Each cartoonify job waits 2 s before it downloads its input from the API's signed
    # file route: a restart begun once the first one runs lands on the downloads.
    await _fault(models, CARTOONIFY, "delay", times=4, seconds=2)
    started = await _start(http, 4)

    async def cartoonifying() -> bool:
        return any(
            r["app"] == CARTOONIFY and r["status"] == "IN_PROGRESS" for r in await _records(models)
        )

    await _wait_until(cartoonifying)
    stack.restart_api(down_seconds=1.5)

    ids = [g for _, g in started]
    statuses = await _finished(db, ids)
    assert statuses == dict.fromkeys(ids, "completed")
    records = await _records(models)
    # The fault really hit: some jobs could not download their inputs...
    assert any(r["status"] == "FAILED" for r in records), records
    for generation_id in ids:  # ...and were resubmitted, within the bound
        counts = _per_generation(records, generation_id)
        assert all(1 <= n <= 1 + RESUBMITS for n in counts.values()), counts
    await _assert_ledger_consistent(db, [u for u, _ in started])
    for user, generation_id in started:
        assert (await user.generation(generation_id))["status"] == "completed"
        assert await user.balance() == 2


async def test_a_model_server_crash_resumes_its_jobs_and_fails_no_generation(
    stack: Stack,
    http: httpx.AsyncClient,
    db: Pool,
    models: httpx.AsyncClient,
) -> None:
    # Animate jobs run 4 s each, two at a time: when the first runs, the model server is
    # SIGKILLed with animate jobs running and, or soon after, others waiting for a slot.
    await _fault(models, ANIMATE, "delay", times=3, seconds=4)
    started = await _start(http, 3)

    async def animating() -> bool:
        return any(
            r["app"] == ANIMATE and r["status"] == "IN_PROGRESS" for r in await _records(models)
        )

    await _wait_until(animating)
    before = {r["request_id"]: r["status"] for r in await _records(models)}
    unfinished = {rid for rid, status in before.items() if status in ("IN_QUEUE", "IN_PROGRESS")}
    stack.crash_model_server(down_seconds=1.0)

    ids = [g for _, g in started]
    statuses = await _finished(db, ids)
    assert statuses == dict.fromkeys(ids, "completed")
    records = await _records(models)
    by_id = {r["request_id"]: r for r in records}
    # Every job caught unfinished ran again under its request id, and completed.
    assert unfinished
    for rid in unfinished:
        assert by_id[rid]["resumed"] == 1 and by_id[rid]["status"] == "COMPLETED", by_id[rid]
    for generation_id in ids:
        counts = _per_generation(records, generation_id)
        assert all(1 <= n <= 1 + RESUBMITS for n in counts.values()), counts
        # animate was submitted once per generation: the resumed job was not resubmitted
        assert counts[ANIMATE] == 1, counts
    await _assert_ledger_consistent(db, [u for u, _ in started])


async def test_a_job_that_keeps_failing_transiently_is_resubmitted_up_to_the_bound(
    stack: Stack,
    http: httpx.AsyncClient,
    db: Pool,
    models: httpx.AsyncClient,
) -> None:
    await _fault(models, ANALYZE, "download_error", times=1 + RESUBMITS)
    [(user, generation_id)] = await _start(http, 1)
    events = await asyncio.wait_for(user.events(generation_id), 120)

    retries = [e.data["message"] for e in events if "trying again" in e.data.get("message", "")]
    assert retries == [f"The model hiccuped; trying again ({n} of {RESUBMITS})…" for n in (1, 2, 3)]
    assert events[-1].event == "failed"
    assert events[-1].data["error_code"] == "internal" and events[-1].data["refunded"] is True
    assert (await user.generation(generation_id))["step"] == "analyze"
    counts = _per_generation(await _records(models), generation_id)
    assert counts == Counter({NSFW: 1, ANALYZE: 1 + RESUBMITS})
    assert await user.balance() == 3
    await _assert_ledger_consistent(db, [user])
    await _assert_replays(stack, generation_id)


async def test_a_transient_failure_within_the_bound_is_invisible_but_for_a_message(
    stack: Stack,
    http: httpx.AsyncClient,
    db: Pool,
    models: httpx.AsyncClient,
) -> None:
    await _fault(models, ANALYZE, "download_error", times=1)
    [(user, generation_id)] = await _start(http, 1)
    events = await asyncio.wait_for(user.events(generation_id), 120)

    assert events[-1].event == "completed", events[-1]
    retry = [e for e in events if "trying again" in e.data.get("message", "")]
    assert [(e.data["step"], e.data["message"]) for e in retry] == [
        ("analyze", f"The model hiccuped; trying again (1 of {RESUBMITS})…")
    ]
    assert _per_generation(await _records(models), generation_id)[ANALYZE] == 2
    assert await user.balance() == 2
    await _assert_ledger_consistent(db, [user])
    await _assert_replays(stack, generation_id)


async def test_content_refusals_are_submitted_once_and_refunded_once(
    stack: Stack,
    http: httpx.AsyncClient,
    db: Pool,
    models: httpx.AsyncClient,
) -> None:
    # The NSFW filter's verdict on the probe photo.
    nsfw_user = await signup(http)
    nsfw_id = (await nsfw_user.generate((FIXTURES / "nsfw_probe.png").read_bytes())).json()["id"]
    nsfw_events = await asyncio.wait_for(nsfw_user.events(nsfw_id), 120)
    assert nsfw_events[-1].data["error_code"] == "nsfw"
    # A validation refusal (422) of the request itself.
    await _fault(models, ANALYZE, "submit_422", times=1 + RESUBMITS)
    refused_user = await signup(http)
    refused_id = (await refused_user.generate(photo("astronaut.png"))).json()["id"]
    refused_events = await asyncio.wait_for(refused_user.events(refused_id), 120)
    assert refused_events[-1].event == "failed" and refused_events[-1].data["refunded"] is True

    records = await _records(models)
    assert _per_generation(records, nsfw_id) == Counter({NSFW: 1})
    assert _per_generation(records, refused_id) == Counter({NSFW: 1, ANALYZE: 1})
    for events in (nsfw_events, refused_events):
        assert not [e for e in events if "trying again" in e.data.get("message", "")]
    for user in (nsfw_user, refused_user):
        assert await user.balance() == 3
    await _assert_ledger_consistent(db, [nsfw_user, refused_user])
