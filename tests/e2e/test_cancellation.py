"""A user stops their generation (POST /v1/generations/{id}/cancel) at any model step:
the provider's job is cancelled, the permit comes back, the token is refunded exactly
once, and the stream ends with a terminal ``cancelled`` event."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from tests.conftest import Stack, insert_generation, ledger_kinds, permits_held
from tests.support.client import User, signup
from tests.support.faults import Pool, assert_ledger_consistent, provider_requests, wait_until
from tests.support.photos import photo
from tests.support.steps import STEP_APPS
from workflows import contract

CANCELLED_AND_REFUNDED = f"{contract.CANCELLED} {contract.REFUNDED}"
# Every model step a generation of the sample photo runs (it needs no full-body pass).
STEPS = [s for s in STEP_APPS if s != contract.EXPAND.name]


async def _job_statuses(models: httpx.AsyncClient, app: str, generation_id: str) -> list[str]:
    return [
        r["status"]
        for r in await provider_requests(models)
        if r["app"] == app and generation_id in str(r["arguments"])
    ]


@pytest.mark.parametrize("step", STEPS)
async def test_cancelling_at_each_step_stops_the_job_refunds_once_and_says_so(
    step: str, stack: Stack, http: httpx.AsyncClient, db: Pool, models: httpx.AsyncClient
) -> None:
    app = STEP_APPS[step]
    fault = {"app": app, "kind": "delay", "times": 1, "seconds": 30}
    (await models.post("/_local/faults", json=fault)).raise_for_status()
    user = await signup(http)
    generation_id = (await user.generate(photo("astronaut.png"))).json()["id"]

    async def running() -> bool:
        return "IN_PROGRESS" in await _job_statuses(models, app, generation_id)

    await wait_until(running, timeout=120)
    answer = await http.post(f"/v1/generations/{generation_id}/cancel", headers=user.headers)
    assert answer.status_code == 202, answer.text
    assert answer.json()["id"] == generation_id

    events = await asyncio.wait_for(user.events(generation_id), 60)
    assert events[-1].event == "cancelled"
    assert events[-1].data["message"] == CANCELLED_AND_REFUNDED
    assert events[-1].data["refunded"] is True and events[-1].data["step"] == step
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert (await user.generation(generation_id))["status"] == "cancelled"
    assert await user.balance() == 3
    assert await ledger_kinds(db, generation_id) == ["charge", "refund"]
    # The provider's job was stopped, and nothing was submitted after it.
    assert await _job_statuses(models, app, generation_id) == ["CANCELLED"]
    later = STEPS[STEPS.index(step) + 1 :]
    for other in later:
        assert await _job_statuses(models, STEP_APPS[other], generation_id) == []
    assert await permits_held(db) == 0
    # Once ended, there is nothing to cancel; the ledger is unchanged by a second try.
    again = await http.post(f"/v1/generations/{generation_id}/cancel", headers=user.headers)
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_ended"
    await assert_ledger_consistent(db, [user])


async def test_only_its_owner_can_cancel_a_generation(
    http: httpx.AsyncClient, db: Pool, models: httpx.AsyncClient
) -> None:
    fault = {"app": STEP_APPS[contract.ANIMATE.name], "kind": "delay", "times": 1, "seconds": 8}
    (await models.post("/_local/faults", json=fault)).raise_for_status()
    owner, other = await signup(http), await signup(http)
    generation_id = (await owner.generate(photo("astronaut.png"))).json()["id"]
    route = f"/v1/generations/{generation_id}/cancel"
    refused = await http.post(route, headers=other.headers)
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "not_found"
    assert (await http.post(route)).status_code == 401
    events = await asyncio.wait_for(owner.events(generation_id), 120)
    assert events[-1].event == "completed"  # untouched by the refused tries
    assert await owner.balance() == 2


async def test_a_generation_whose_workflow_never_started_is_settled_by_the_cancel(
    http: httpx.AsyncClient, db: Pool
) -> None:
    # Charged and queued, but its workflow was never started (the API died in between).
    user: User = await signup(http)
    generation_id = await insert_generation(db, uuid.UUID(user.id), charged=True)
    assert await user.balance() == 2
    answer = await http.post(f"/v1/generations/{generation_id}/cancel", headers=user.headers)
    assert answer.status_code == 202 and answer.json()["status"] == "cancelled"
    events = await asyncio.wait_for(user.events(str(generation_id)), 30)
    assert [e.event for e in events] == ["cancelled"]
    assert events[-1].data["message"] == CANCELLED_AND_REFUNDED
    assert await user.balance() == 3
    assert await ledger_kinds(db, generation_id) == ["charge", "refund"]
