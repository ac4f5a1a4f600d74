"""Owner alerts through the whole stack: generations that really fail (faults injected at
the local model server), workflows that end without settling, and the alert digest's
Temporal Schedule, each alert posted by the real pushover-complete library to the local
Pushover stand-in (tests/support/pushover.py), field by field."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool
from temporalio import workflow
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities.providers.local import APPS
from infra.alerts import failed_workflows_link
from infra.settings import Settings
from tests.conftest import TEST_ENV, Stack, insert_generation, ledger_kinds
from tests.support import pushover as pushover_stub
from tests.support.client import signup
from tests.support.faults import finished, provider_requests, start_generations, wait_until
from tests.support.paths import FIXTURES
from tests.support.photos import photo
from tests.support.pushover import Message, Pushover
from tests.support.steps import model_steps
from workflows import contract

Pool = AsyncConnectionPool  # type: ignore[type-arg]


@pytest.fixture
async def temporal(stack: Stack) -> Client:
    return await Client.connect(stack.cfg.temporal_address)


@pytest.fixture
async def fresh_alerts(db: Pool) -> AsyncIterator[None]:
    """No alert of an earlier test in the window: this test's first one is a lead."""
    async with db.connection() as conn:
        await conn.execute("DELETE FROM alerts")
    yield


async def _fault(models: httpx.AsyncClient, step: str, kind: str, **spec: Any) -> None:
    body = {"app": APPS[step], "kind": kind, **spec}
    (await models.post("/_local/faults", json=body)).raise_for_status()


async def _rows(db: Pool, generation_ids: list[str]) -> list[dict[str, Any]]:
    async with db.connection() as conn:
        cur = await conn.execute(
            "SELECT * FROM alerts WHERE generation_id = ANY(%s) ORDER BY id",
            ([uuid.UUID(g) for g in generation_ids],),
        )
        return await cur.fetchall()


def _link(stack: Stack, workflow_id: str, run_id: str) -> str:
    return (
        f"{stack.cfg.temporal_ui_url}/namespaces/default/workflows/{workflow_id}/{run_id}/history"
    )


def _lines(message: Message) -> dict[str, str]:
    pairs = (line.split(": ", 1) for line in message["message"].splitlines()[1:])
    return {key: value for key, value in pairs}


async def _run_digest(temporal: Client) -> None:
    """Trigger the digest's schedule now and wait for the run it starts to finish."""
    handle = temporal.get_schedule_handle(contract.ALERT_DIGEST_SCHEDULE)
    before = len((await handle.describe()).info.recent_actions)
    await handle.trigger()

    async def started() -> bool:
        return len((await handle.describe()).info.recent_actions) > before

    await wait_until(started, timeout=30)
    action = (await handle.describe()).info.recent_actions[-1].action
    await temporal.get_workflow_handle(action.workflow_id).result()  # type: ignore[attr-defined]


async def test_a_failed_generation_sends_one_pushover_alert_with_every_field(
    stack: Stack,
    http: httpx.AsyncClient,
    db: Pool,
    models: httpx.AsyncClient,
    pushover: Pushover,
    temporal: Client,
    fresh_alerts: None,
) -> None:
    await _fault(models, contract.ANIMATE.name, "error")
    user = await signup(http)
    response = await user.generate(photo("astronaut.png"))
    generation_id = response.json()["id"]
    # Pushover down for this alert's first try: Temporal retries the activity. (Only for
    # this generation's: the day's spend alert may go out meanwhile.)
    pushover.fail_next(1, where=lambda fields: generation_id in fields.get("message", ""))
    events = await user.events(generation_id)
    assert events[-1].event == "failed" and events[-1].data["refunded"] is True

    [message] = await pushover.wait_for(lambda m: generation_id in m["message"])
    run_id = (await temporal.get_workflow_handle(generation_id).describe()).run_id
    assert message["token"] == pushover_stub.TOKEN and message["user"] == pushover_stub.USER
    assert message["title"] == "BitBuddy failed at animate"
    assert message["message"].splitlines()[0] == "a generation failed"
    lines = _lines(message)
    assert lines["user"] == user.id
    assert lines["generation"] == generation_id
    assert lines["step"] == "animate"
    assert lines["error"].startswith("ModelJobFailed: ") and "failed" in lines["error"]
    assert lines["refunded"] == "yes"
    assert message["url"] == _link(stack, generation_id, run_id)
    assert message["url_title"] == "Open in Temporal"
    assert message["priority"] == "0"
    assert message.get("retry") is None and message.get("expire") is None
    refused = [r for r in pushover.requests() if not r.accepted and generation_id in r["message"]]
    assert len(refused) == 1  # the first try, refused; the retry delivered it

    [row] = await _rows(db, [generation_id])
    assert (row["kind"], row["delivery"], row["priority"]) == ("generation_failed", "sent", 0)
    assert (row["step"], row["error_class"], row["refunded"]) == ("animate", "ModelJobFailed", True)
    assert str(row["user_id"]) == user.id and row["run_id"] == run_id
    assert row["link"] == message["url"] and row["title"] == message["title"]
    await asyncio.sleep(2)
    assert len(pushover.about(generation_id)) == 1


async def test_failures_at_one_step_send_one_alert_then_one_digest_with_the_count(
    stack: Stack,
    http: httpx.AsyncClient,
    db: Pool,
    models: httpx.AsyncClient,
    pushover: Pushover,
    temporal: Client,
    fresh_alerts: None,
) -> None:
    await _fault(models, contract.SEGMENT_VIDEO.name, "error", times=3)
    ids = [g for _, g in await start_generations(http, 3)]
    assert set((await finished(db, ids)).values()) == {"failed"}

    async def recorded() -> bool:
        return len(await _rows(db, ids)) == 3

    await wait_until(recorded, timeout=60)
    rows = await _rows(db, ids)
    assert [r["delivery"] for r in rows] == ["sent", "suppressed", "suppressed"]
    assert {r["dedupe_key"] for r in rows} == {"generation_failed:segment_video:ModelJobFailed"}
    sent = pushover.messages(lambda m: any(g in m["message"] for g in ids))
    assert len(sent) == 1 and sent[0]["title"] == "BitBuddy failed at segment_video"

    def digest(m: Message) -> bool:
        return "more generations failed at segment_video" in m["message"]

    assert pushover.messages(digest) == []  # the digest is the schedule's
    await _run_digest(temporal)
    [message] = await pushover.wait_for(digest, timeout=10)
    assert message["message"].splitlines()[0] in (
        "2 more generations failed at segment_video in the last minute",
        "2 more generations failed at segment_video in the last 2 minutes",
    )
    assert message["priority"] == "0"
    assert message["url"] == failed_workflows_link(Settings())
    await _run_digest(temporal)  # once: nothing is counted twice
    assert len(pushover.messages(digest)) == 1
    assert all(r["digested_in"] is not None for r in (await _rows(db, ids))[1:])


async def test_a_refused_photo_sends_no_alert(
    stack: Stack,
    http: httpx.AsyncClient,
    db: Pool,
    models: httpx.AsyncClient,
    pushover: Pushover,
) -> None:
    user = await signup(http)
    response = await user.generate((FIXTURES / "nsfw_probe.png").read_bytes())
    generation_id = response.json()["id"]
    events = await user.events(generation_id)
    assert events[-1].event == "failed" and events[-1].data["error_code"] == "nsfw"
    await asyncio.sleep(3)  # past when an alert would have been sent, after the settle
    assert await _rows(db, [generation_id]) == []
    assert pushover.about(generation_id) == []
    assert not [r for r in pushover.requests() if generation_id in (r.get("message") or "")]


async def test_a_stuck_generation_alerts_with_its_link(
    stack: Stack,
    http: httpx.AsyncClient,
    db: Pool,
    models: httpx.AsyncClient,
    pushover: Pushover,
    temporal: Client,
    fresh_alerts: None,
) -> None:
    await _fault(models, contract.ANIMATE.name, "delay", seconds=30)
    user = await signup(http)
    generation_id = (await user.generate(photo("astronaut.png"))).json()["id"]

    async def animating() -> bool:
        return (await user.generation(generation_id))["step"] == "animate"

    await wait_until(animating, timeout=120)
    handle = temporal.get_workflow_handle(generation_id)
    run_id = (await handle.describe()).run_id
    await handle.terminate(reason="operator")  # skips the workflow's own cleanup and alert
    async with db.connection() as conn:  # as if the sweeper's patience had run out
        await conn.execute(
            "UPDATE generations SET updated_at = now() - interval '1 hour' WHERE id = %s",
            (uuid.UUID(generation_id),),
        )

    [message] = await pushover.wait_for(lambda m: generation_id in m["message"])
    assert message["title"] == "BitBuddy stuck at animate"
    lines = _lines(message)
    assert (lines["user"], lines["generation"], lines["step"]) == (
        user.id,
        generation_id,
        "animate",
    )
    assert lines["error"].startswith("workflow TERMINATED: ")
    assert lines["refunded"] == "yes"
    assert message["url"] == _link(stack, generation_id, run_id)
    assert message["priority"] == "1"
    [row] = await _rows(db, [generation_id])
    assert (row["kind"], row["delivery"]) == ("stuck_generation", "sent")


@workflow.defn(name="OwnerAlertsTestCleanupFails")
class _CleanupFails:
    """Stands in for a BitBuddy run whose settle (the refund) failed after its retries:
    it ends FAILED with its generation still open."""

    @workflow.run
    async def run(self) -> None:
        raise ApplicationError("settle_generation failed after its retries", non_retryable=True)


async def test_a_refund_that_failed_is_an_emergency(
    stack: Stack,
    http: httpx.AsyncClient,
    db: Pool,
    pushover: Pushover,
    temporal: Client,
    fresh_alerts: None,
) -> None:
    user = await signup(http)
    generation_id = str(await insert_generation(db, uuid.UUID(user.id), charged=True))
    async with db.connection() as conn:
        await conn.execute(
            "UPDATE generations SET status = 'running', step = 'animate' WHERE id = %s",
            (uuid.UUID(generation_id),),
        )
    queue = f"owner-alerts-{uuid.uuid4()}"
    async with Worker(
        temporal,
        task_queue=queue,
        workflows=[_CleanupFails],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        handle = await temporal.start_workflow(
            _CleanupFails.run, id=generation_id, task_queue=queue
        )
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    async with db.connection() as conn:
        await conn.execute(
            "UPDATE generations SET updated_at = now() - interval '1 hour' WHERE id = %s",
            (uuid.UUID(generation_id),),
        )

    [message] = await pushover.wait_for(lambda m: generation_id in m["message"])
    assert message["title"] == "Refund FAILED at animate"
    assert message["priority"] == "2"
    settings = Settings()
    assert message["retry"] == str(settings.alert_emergency_retry_seconds)
    assert message["expire"] == str(settings.alert_emergency_expire_seconds)
    lines = _lines(message)
    assert lines["error"].startswith("workflow FAILED: ")
    assert lines["refunded"] == "yes"  # the sweep refunded it since
    assert message["url"] == _link(stack, generation_id, handle.result_run_id or "")
    [row] = await _rows(db, [generation_id])
    assert (row["kind"], row["priority"]) == ("refund_failed", 2)


async def test_a_provider_refusing_our_account_alerts_the_owner_and_refunds(
    stack: Stack,
    http: httpx.AsyncClient,
    db: Pool,
    models: httpx.AsyncClient,
    pushover: Pushover,
    fresh_alerts: None,
) -> None:
    """fal answers 403 "User is locked ... Exhausted balance" to the first model step's
    submit (the model server's submit_403 fault): the generation fails refunded, and the
    owner hears of the account problem at high priority, beside the failure itself."""
    first = model_steps(expand=False)[0]
    await _fault(models, first.name, "submit_403")
    user = await signup(http)
    response = await user.generate(photo("astronaut.png"))
    assert response.status_code == 202, response.text
    generation_id = response.json()["id"]
    events = await user.events(generation_id)
    assert events[-1].event == "failed" and events[-1].data["refunded"] is True
    assert await ledger_kinds(db, generation_id) == ["charge", "refund"]
    assert await user.balance() == int(TEST_ENV["BITBUDDIES_SIGNUP_TOKENS"])
    # One submission, refused by the provider, and never sent again.
    submitted = [
        (r["app"], r["status"])
        for r in await provider_requests(models)
        if generation_id in str(r["arguments"])
    ]
    assert submitted == [(APPS[first.name], "REJECTED")]

    # The generation's own alert comes last (after the settle), the outage's before it.
    [failure] = await pushover.wait_for(
        lambda m: generation_id in m["message"] and m["priority"] == "0"
    )
    assert failure["title"] == f"BitBuddy failed at {first.name}"
    [outage] = pushover.messages(lambda m: generation_id in m["message"] and m["priority"] == "1")
    assert outage["title"] == "Model provider refuses our account: balance_exhausted"
    assert outage["message"].splitlines()[0] == "the model provider is failing"
    lines = _lines(outage)
    assert (lines["user"], lines["generation"], lines["step"]) == (
        user.id,
        generation_id,
        first.name,
    )
    assert lines["error"].startswith("balance_exhausted: ")
    assert "User is locked. Reason: Exhausted balance." in lines["error"]
    assert outage["url"].startswith(f"{stack.cfg.temporal_ui_url}/namespaces/default/workflows/")
    assert generation_id in outage["url"]

    rows = await _rows(db, [generation_id])
    assert [(r["kind"], r["priority"], r["delivery"], r["step"]) for r in rows] == [
        ("provider_outage", 1, "sent", first.name),
        ("generation_failed", 0, "sent", first.name),
    ]
    assert rows[0]["error_class"] == "balance_exhausted"
    assert rows[1]["refunded"] is True
    await asyncio.sleep(2)
    assert len(pushover.about(generation_id)) == 2  # nothing else, nothing twice
