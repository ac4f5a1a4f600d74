"""A generation whose workflow still runs long past its deadline cannot be running its own
code (its workflow task keeps failing on a bug, or no worker serves its queue): the
sweep terminates it, refunds the token once, ends its stream and alerts the owner.

The workflow here is real and really stuck: started on a task queue no worker polls.
The sweep is the real one, run in this process as an activity, with its threshold
lowered (the real one is two hours and a quarter)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import ActivityEnvironment

from activities.housekeeping import Sweeper
from activities.runtime import open_runtime
from infra.database import alerts as alerts_repo
from infra.settings import get_settings
from tests.conftest import Stack, insert_generation, ledger_kinds
from tests.support.client import signup
from tests.support.faults import Pool, assert_ledger_consistent
from workflows import contract
from workflows.contract import BitBuddyInput, RenderSpec


async def test_a_workflow_running_past_its_deadline_is_terminated_refunded_and_alerted(
    stack: Stack, http: httpx.AsyncClient, db: Pool
) -> None:
    user = await signup(http)
    generation_id = await insert_generation(
        db, uuid.UUID(user.id), charged=True, age_seconds=3 * 3600
    )
    temporal = await Client.connect(stack.cfg.temporal_address)
    handle = await temporal.start_workflow(
        contract.WORKFLOW_NAME,
        BitBuddyInput(
            generation_id=str(generation_id),
            user_id=user.id,
            prompt="a knight",
            photo_key="k",
            render=RenderSpec(),
            media_task_queue="nobody-polls",
        ),
        id=str(generation_id),
        task_queue=f"nobody-polls-{uuid.uuid4().hex}",
    )
    settings = get_settings()
    async with open_runtime(settings) as runtime:
        # Within the threshold: left alone.
        patient = Sweeper(runtime, temporal, stuck_after=timedelta(hours=1))
        await ActivityEnvironment().run(patient.sweep_once)
        assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
        assert await ledger_kinds(db, generation_id) == ["charge"]

        sweeper = Sweeper(runtime, temporal, stuck_after=timedelta(0))
        await ActivityEnvironment().run(sweeper.sweep_once)
        # the next sweep finds it settled and terminated: nothing more
        await ActivityEnvironment().run(Sweeper(runtime, temporal).sweep_once)

    assert (await handle.describe()).status == WorkflowExecutionStatus.TERMINATED
    assert await ledger_kinds(db, generation_id) == ["charge", "refund"]
    assert (await user.generation(str(generation_id)))["status"] == "failed"
    events = await user.events(str(generation_id))
    assert events[-1].event == "failed" and events[-1].data["refunded"] is True
    async with db.connection() as conn:
        found = await alerts_repo.for_generation(conn, generation_id)
    [alert] = found
    assert (alert.kind, alert.error_class) == ("stuck_generation", "workflow STUCK")
    assert alert.refunded is True and alert.link and str(generation_id) in alert.link
    await assert_ledger_consistent(db, [user])
