"""Starting a generation's workflow: from the API (a new generation, a retried request)
and from housekeeping (a generation charged but left queued when the API died);
cancelling it, for its owner; and telling it a provider job ended (the provider's
webhook). Client side only: the workflow itself never imports this
module.

Starting is safe to repeat: the workflow id is the generation id, and a finished run is
never started again. If Temporal refuses, the generation is settled (refunded, recorded,
its terminal event written, in one transaction).

Each workflow starts with a Temporal priority, which its activities inherit (the
transcode on the shared media queue too): an interactive generation (someone waits for
it) on the interactive queue at priority 2, one started in bulk on the batch queue at 4.
Where both wait on one queue, every priority-2 task goes before any priority-4 one (1 is
the highest, 3 the default). Within a priority, the fairness key, the owner's id, makes
a backed-up queue hand out tasks round-robin by user rather than in arrival order, so
one user's burst cannot starve another's (the server must have fairness enabled:
infra/supervisor.py, infra/deploy/temporal-dynamicconfig.yaml; on Temporal Cloud, in the
namespace's settings). Without a backlog neither changes anything.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Final, Literal

from temporalio.client import Client
from temporalio.common import Priority, WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from billing import settlement
from infra.database import records
from infra.database.records import Conn
from infra.settings import Settings
from workflows import contract
from workflows.contract import BitBuddyInput, JobFinished, RenderSpec, RetrySpec

log = logging.getLogger("bitbuddies.lifecycle")


# Who waits for a generation: someone, now (the API), or nobody in particular (bulk).
Kind = Literal["interactive", "batch"]
PRIORITY_KEYS: Final[dict[Kind, int]] = {"interactive": 2, "batch": 4}


def task_queue(settings: Settings, kind: Kind) -> str:
    return settings.batch_task_queue if kind == "batch" else settings.task_queue


def priority(generation: records.Generation, kind: Kind) -> Priority:
    return Priority(priority_key=PRIORITY_KEYS[kind], fairness_key=str(generation.user_id))


class StartFailed(Exception):
    """Temporal refused to start the workflow; the token has been refunded."""


def workflow_input(settings: Settings, generation: records.Generation) -> BitBuddyInput:
    return BitBuddyInput(
        generation_id=str(generation.id),
        user_id=str(generation.user_id),
        prompt=generation.prompt,
        photo_key=generation.photo_key,
        render=RenderSpec(
            size=settings.render_size,
            fps=settings.animation_fps,
            seconds=settings.animation_seconds,
            nsfw_threshold=settings.nsfw_threshold,
        ),
        media_task_queue=settings.media_task_queue,
        retry=RetrySpec(
            resubmits=settings.model_resubmits,
            backoff_seconds=settings.model_resubmit_backoff_seconds,
        ),
    )


async def start_workflow(
    client: Client,
    settings: Settings,
    generation: records.Generation,
    kind: Kind = "interactive",
) -> None:
    """Start (or find already started) the generation's workflow, on ``kind``'s queue at
    its priority, with its owner as fairness key."""
    with contextlib.suppress(WorkflowAlreadyStartedError):
        await client.start_workflow(
            contract.WORKFLOW_NAME,
            workflow_input(settings, generation),
            id=str(generation.id),
            task_queue=task_queue(settings, kind),
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            priority=priority(generation, kind),
        )


async def start_or_refund(
    conn: Conn,
    client: Client,
    settings: Settings,
    generation: records.Generation,
    kind: Kind = "interactive",
) -> None:
    """Start the generation's workflow; if Temporal refuses, refund and raise StartFailed."""
    try:
        await start_workflow(client, settings, generation, kind)
    except RPCError as err:
        # The start may have reached Temporal even though we saw an error.
        if await _workflow_exists(client, generation):
            return
        await _undo_charge(conn, generation, f"workflow start failed: {err.status.name}")
        log.error(
            "could not start workflow; token refunded",
            extra={"generation_id": generation.id, "user_id": generation.user_id},
        )
        raise StartFailed(str(generation.id)) from err


async def _workflow_exists(client: Client, generation: records.Generation) -> bool | None:
    """True/False, or None when Temporal can't say."""
    try:
        description = await client.get_workflow_handle(str(generation.id)).describe()
    except RPCError as err:
        return False if err.status == RPCStatusCode.NOT_FOUND else None
    return description is not None


async def _undo_charge(conn: Conn, generation: records.Generation, why: str) -> None:
    """Settle it (billing/settlement.py). Nobody is told through Redis: the caller
    answers 503, and any stream of it reads the log."""
    await settlement.settle(
        conn,
        generation.id,
        settlement.Ending(
            status="failed", step="queued", error_code="unavailable", message=contract.START_FAILED
        ),
        settled_by="start",
        reason=why,
    )


class CancelUnavailable(Exception):
    """Temporal could not be asked to cancel the workflow; nothing changed."""


# Temporal's answers when there is no run to cancel: never started, or already closed.
_NO_RUN = frozenset({RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION})


async def cancel(conn: Conn, client: Client, generation: records.Generation) -> bool:
    """Stop a generation that has not ended. Its workflow is asked to cancel: at its next
    safe point its own cleanup (which runs to the end even then) stops the provider job,
    gives the permit back, refunds and writes the terminal ``cancelled`` event. True
    then. With no workflow running (never started, or gone), it is settled here as
    cancelled, refunded if charged: False. CancelUnavailable when Temporal cannot say."""
    try:
        await client.get_workflow_handle(str(generation.id)).cancel()
    except RPCError as err:
        if err.status not in _NO_RUN:
            raise CancelUnavailable(err.status.name) from err
    else:
        return True
    await settlement.settle(
        conn,
        generation.id,
        settlement.Ending(
            status="cancelled",
            step=generation.step or "queued",
            error_code="cancelled",
            message=contract.CANCELLED,
        ),
        settled_by="cancel",
        reason="cancelled by its owner; no workflow was running",
    )
    return False


async def job_finished(client: Client, generation_id: str, request_id: str, *, ok: bool) -> bool:
    """Signal the generation's workflow that one of its provider jobs ended. True when a
    running workflow took the signal; False when none runs (it ended, or never started):
    nothing waits for the job then. Raises RPCError when Temporal cannot say."""
    try:
        await client.get_workflow_handle(generation_id).signal(
            contract.JOB_FINISHED_SIGNAL, JobFinished(request_id=request_id, ok=ok)
        )
    except RPCError as err:
        if err.status in _NO_RUN:
            return False
        raise
    return True
