"""Transient failures are not the user's problem: a restarted API or model server, or a
job that cannot fetch its inputs, costs a resubmission, not a generation. Content
refusals are never resubmitted. Faults are real: processes are stopped and killed."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
from psycopg_pool import AsyncConnectionPool
from temporalio.client import Client
from temporalio.worker import Replayer

from activities.providers.local import APPS
from tests.conftest import Stack
from tests.support.client import signup
from tests.support.faults import (
    assert_ledger_consistent,
    finished,
    provider_requests,
    start_generations,
    submissions_of,
    wait_until,
)
from tests.support.paths import FIXTURES
from tests.support.photos import photo
from workflows import contract
from workflows.bitbuddy import TRANSIENT_RESUBMIT_PATCH, BitBuddyWorkflow

RESUBMITS = 3  # the default of Settings.model_resubmits, which the tests run with
CARTOONIFY = APPS[contract.CARTOONIFY.name]
ANIMATE = APPS[contract.ANIMATE.name]
ANALYZE = APPS[contract.ANALYZE.name]
NSFW = APPS[contract.NSFW_FILTER.name]

Pool = AsyncConnectionPool  # type: ignore[type-arg]


async def _fault(
    models: httpx.AsyncClient, app: str, kind: str, times: int, seconds: float = 0
) -> None:
    body = {"app": app, "kind": kind, "times": times, "seconds": seconds}
    (await models.post("/_local/faults", json=body)).raise_for_status()


async def _assert_replays(stack: Stack, generation_id: str) -> None:
    """The recorded history (resubmissions included) replays on the workflow code."""
    temporal = await Client.connect(stack.cfg.temporal_address)
    history = await temporal.get_workflow_handle(generation_id).fetch_history()
    markers = [
        str(e.marker_recorded_event_attributes)
        for e in history.events
        if e.HasField("marker_recorded_event_attributes")
    ]
    assert any(TRANSIENT_RESUBMIT_PATCH in m for m in markers), (
        "a resubmission is recorded behind the transient-resubmit patch"
    )
    await Replayer(workflows=[BitBuddyWorkflow]).replay_workflow(history)


async def test_an_api_restart_while_jobs_download_their_inputs_fails_no_generation(
    stack: Stack,
    http: httpx.AsyncClient,
    db: Pool,
    models: httpx.AsyncClient,
) -> None:
    # Each cartoonify job waits 2 s before it downloads its input from the API's signed
    # file route: a restart begun once the first one runs lands on the downloads.
    await _fault(models, CARTOONIFY, "delay", times=4, seconds=2)
    started = await start_generations(http, 4)

    async def cartoonifying() -> bool:
        return any(
            r["app"] == CARTOONIFY and r["status"] == "IN_PROGRESS"
            for r in await provider_requests(models)
        )

    await wait_until(cartoonifying)
    stack.restart_api(down_seconds=1.5)

    ids = [g for _, g in started]
    statuses = await finished(db, ids)
    assert statuses == dict.fromkeys(ids, "completed")
    records = await provider_requests(models)
    # The fault really hit: some jobs could not download their inputs...
    assert any(r["status"] == "FAILED" for r in records), records
    for generation_id in ids:  # ...and were resubmitted, within the bound
        counts = submissions_of(records, generation_id)
        assert all(1 <= n <= 1 + RESUBMITS for n in counts.values()), counts
    await assert_ledger_consistent(db, [u for u, _ in started])
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
    started = await start_generations(http, 3)

    async def animating() -> bool:
        return any(
            r["app"] == ANIMATE and r["status"] == "IN_PROGRESS"
            for r in await provider_requests(models)
        )

    await wait_until(animating)
    before = {r["request_id"]: r["status"] for r in await provider_requests(models)}
    unfinished = {rid for rid, status in before.items() if status in ("IN_QUEUE", "IN_PROGRESS")}
    stack.crash_model_server(down_seconds=1.0)

    ids = [g for _, g in started]
    statuses = await finished(db, ids)
    assert statuses == dict.fromkeys(ids, "completed")
    records = await provider_requests(models)
    by_id = {r["request_id"]: r for r in records}
    # Every job caught unfinished ran again under its request id, and completed.
    assert unfinished
    for rid in unfinished:
        assert by_id[rid]["resumed"] == 1 and by_id[rid]["status"] == "COMPLETED", by_id[rid]
    for generation_id in ids:
        counts = submissions_of(records, generation_id)
        assert all(1 <= n <= 1 + RESUBMITS for n in counts.values()), counts
        # animate was submitted once per generation: the resumed job was not resubmitted
        assert counts[ANIMATE] == 1, counts
    await assert_ledger_consistent(db, [u for u, _ in started])


async def test_a_job_that_keeps_failing_transiently_is_resubmitted_up_to_the_bound(
    stack: Stack,
    http: httpx.AsyncClient,
    db: Pool,
    models: httpx.AsyncClient,
) -> None:
    await _fault(models, ANALYZE, "download_error", times=1 + RESUBMITS)
    [(user, generation_id)] = await start_generations(http, 1)
    events = await asyncio.wait_for(user.events(generation_id), 120)

    retries = [e.data["message"] for e in events if "trying again" in e.data.get("message", "")]
    assert retries == [f"The model hiccuped; trying again ({n} of {RESUBMITS})…" for n in (1, 2, 3)]
    assert events[-1].event == "failed"
    assert events[-1].data["error_code"] == "internal" and events[-1].data["refunded"] is True
    assert (await user.generation(generation_id))["step"] == contract.ANALYZE.name
    counts = submissions_of(await provider_requests(models), generation_id)
    assert counts == Counter({NSFW: 1, ANALYZE: 1 + RESUBMITS})
    assert await user.balance() == 3
    await assert_ledger_consistent(db, [user])
    await _assert_replays(stack, generation_id)


async def test_a_transient_failure_within_the_bound_is_invisible_but_for_a_message(
    stack: Stack,
    http: httpx.AsyncClient,
    db: Pool,
    models: httpx.AsyncClient,
) -> None:
    await _fault(models, ANALYZE, "download_error", times=1)
    [(user, generation_id)] = await start_generations(http, 1)
    events = await asyncio.wait_for(user.events(generation_id), 120)

    assert events[-1].event == "completed", events[-1]
    retry = [e for e in events if "trying again" in e.data.get("message", "")]
    assert [(e.data["step"], e.data["message"]) for e in retry] == [
        (contract.ANALYZE.name, f"The model hiccuped; trying again (1 of {RESUBMITS})…")
    ]
    assert submissions_of(await provider_requests(models), generation_id)[ANALYZE] == 2
    assert await user.balance() == 2
    await assert_ledger_consistent(db, [user])
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

    records = await provider_requests(models)
    assert submissions_of(records, nsfw_id) == Counter({NSFW: 1})
    assert submissions_of(records, refused_id) == Counter({NSFW: 1, ANALYZE: 1})
    for events in (nsfw_events, refused_events):
        assert not [e for e in events if "trying again" in e.data.get("message", "")]
    for user in (nsfw_user, refused_user):
        assert await user.balance() == 3
    await assert_ledger_consistent(db, [nsfw_user, refused_user])
