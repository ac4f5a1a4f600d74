"""Housekeeping: what the Housekeeping workflow's sweep does, run by a Temporal Schedule
every ``sweep_interval_seconds`` (infra/schedules.py), one sweep at a time.

Two ways a charged token could otherwise be stranded:

- The API dies between committing the charge and starting the workflow: the generation
  stays ``queued`` with nothing running. The sweep starts it (safe to repeat: the
  workflow id is the generation id); if Temporal refuses, the token is refunded.
- The workflow ends without running its own cleanup (terminated by an operator, or timed
  out), or is still running well past the generation's deadline (``contract.STUCK_AFTER``:
  it cannot be running its own code, which stops at the deadline; its workflow task keeps
  failing on a bug, or no worker serves its queue), in which case the sweep terminates
  it first: the sweep refunds the token, records the failure with its terminal event,
  asks the provider to stop its recorded jobs (nobody will fetch their results), frees
  their permits once every job is known to be over (a job the provider could not be
  asked about keeps its permit until a later sweep can), and alerts the owner: a
  ``stuck_generation`` alert, or a ``refund_failed`` one (an emergency) when the workflow
  ran its cleanup and still ended with the generation open, which means its refund
  failed after every retry (a refund the sweep itself cannot make alerts so too).

Only generations that have not moved for ``stale_queued_seconds`` are looked at, so a
workflow that is merely slow is never touched (its Temporal status says RUNNING).

The same sweep deletes the working files (the photo and the intermediate results) of
every generation that ended more than ``files_retention_seconds`` ago; the character's
assets (under ``characters/``) stay.

It also deletes expired credentials (browser sessions, bearer tokens, email verification
and password reset tokens), and for a day after an account's deletion, watches its
generations (``erased_generations``): whatever a workflow that was still running then
writes to storage afterwards is deleted again, and the permits it held are freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from temporalio import activity
from temporalio.api.enums.v1 import WorkflowExecutionStatus
from temporalio.client import Client, WorkflowExecutionDescription
from temporalio.service import RPCError, RPCStatusCode

from activities.runtime import Runtime
from billing import settlement
from infra import alerts, progress
from infra.database import permits, records, webhooks
from infra.falclient import cancel_job
from infra.storage import keys
from workflows import contract
from workflows.contract import INTERNAL_FAILURE, DigestReport, SweepReport
from workflows.lifecycle import StartFailed, start_or_refund

log = logging.getLogger("bitbuddies.housekeeping")

SWEEP_PAGE = 100
# A deleted account's generations are watched this long: the longest a generation runs.
ERASED_WATCH = timedelta(days=1)
# Provider webhook deliveries are remembered this long (repeats are refused by their
# signed timestamp after five minutes anyway).
WEBHOOK_MEMORY = timedelta(days=1)
# fal-client retries an unreachable provider for about half a minute; a sweep moves on
# sooner and asks again next time.
STOP_JOB_SECONDS = 5.0
# A workflow that closed in one of these without its generation being settled skipped its
# own cleanup. COMPLETED is not here: it records the character before it completes.
UNSETTLED_ENDINGS = {
    WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_TERMINATED,
    WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_TIMED_OUT,
    WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_FAILED,
    WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_CANCELED,
}
# Of those, the endings of a workflow that ran its own cleanup (it settles on every
# failure and cancellation, then ends so): the generation still open means that settle,
# the refund, failed after all its retries.
CLEANUP_FAILED_ENDINGS = {
    WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_FAILED,
    WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_CANCELED,
}


class Sweeper:
    def __init__(
        self, runtime: Runtime, temporal: Client, *, stuck_after: timedelta = contract.STUCK_AFTER
    ) -> None:
        self.db = runtime.db
        self.storage = runtime.storage
        self.redis = runtime.redis
        self.fal = runtime.fal
        self.settings = runtime.settings
        self.temporal = temporal
        self.stuck_after = stuck_after
        self.report = SweepReport()

    async def sweep_once(self) -> SweepReport:
        """Settle every stale open generation, free the permits ended generations still
        hold, delete working files past their retention."""
        async with self.db.connection() as conn:
            # Page by page, so generations still running at the front of the line (a long
            # provider queue) never hide the ones behind them.
            page: list[records.Generation] = []
            while True:
                page = await records.stale_open_generations(
                    conn,
                    timedelta(seconds=self.settings.stale_queued_seconds),
                    after=page[-1] if page else None,
                    limit=SWEEP_PAGE,
                )
                for generation in page:
                    activity.heartbeat()
                    await self._settle(conn, generation)
                self.report.looked_at += len(page)
                if len(page) < SWEEP_PAGE:
                    break
            await self._free_permits_of_ended(conn)
            await self._discard_working_files(conn)
            await self._delete_expired_credentials(conn)
            await webhooks.forget_deliveries(conn, WEBHOOK_MEMORY)
            await self._clean_up_after_erased(conn)
        return self.report

    async def _delete_expired_credentials(self, conn: Any) -> None:
        expired = await records.delete_expired_credentials(conn)
        if expired.total:
            log.info(
                "deleted expired credentials: %d sessions, %d bearer tokens, %d email tokens,"
                " %d pairing codes",
                expired.sessions,
                expired.bearer_tokens,
                expired.email_tokens,
                expired.pairing_codes,
            )

    async def _clean_up_after_erased(self, conn: Any) -> None:
        """The generations of deleted accounts: delete their storage prefixes again (a
        workflow still running at the deletion may have written since) and free the
        permits they hold; forget them after ``ERASED_WATCH``."""
        await records.forget_erased_generations(conn, ERASED_WATCH)
        page: list[records.ErasedGeneration] = []
        while True:
            page = await records.erased_generations(
                conn, after=page[-1].generation_id if page else None, limit=SWEEP_PAGE
            )
            for erased in page:
                activity.heartbeat()
                deleted = await self.storage.delete_prefix(keys.working_files(erased.generation_id))
                if erased.character_id is not None:
                    deleted += await self.storage.delete_prefix(
                        keys.character_assets(erased.character_id)
                    )
                _, freed = await self._free_permits(conn, erased.generation_id)
                if deleted or freed:
                    log.info(
                        "deleted %d files of a deleted account's generation, freed %d permits",
                        deleted,
                        freed,
                        extra={"generation_id": erased.generation_id},
                    )
            if len(page) < SWEEP_PAGE:
                break

    async def _discard_working_files(self, conn: Any) -> None:
        retention = timedelta(seconds=self.settings.files_retention_seconds)
        while ended := await records.generations_with_files_to_discard(
            conn, retention, limit=SWEEP_PAGE
        ):
            for generation_id in ended:
                activity.heartbeat()
                deleted = await self.storage.delete_prefix(keys.working_files(generation_id))
                await records.mark_files_discarded(conn, generation_id)
                self.report.files_discarded += 1
                log.info(
                    "deleted %d working files", deleted, extra={"generation_id": generation_id}
                )

    async def _settle(self, conn: Any, generation: records.Generation) -> None:
        context = {"generation_id": generation.id, "user_id": generation.user_id}
        try:
            described = await self.temporal.get_workflow_handle(str(generation.id)).describe()
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            described = None
        if described is None:
            if generation.status == "queued":
                log.warning("starting a generation left queued", extra=context)
                # StartFailed: start_or_refund refunded it and recorded the failure.
                with contextlib.suppress(StartFailed):
                    await start_or_refund(conn, self.temporal, self.settings, generation)
            else:
                await self._abandon(
                    conn,
                    generation,
                    "its workflow no longer exists",
                    None,
                    "stuck_generation",
                    "GONE",
                )
            return
        ending = described.raw_description.workflow_execution_info.status
        if ending == WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING:
            await self._stop_if_stuck(conn, generation, described)
            return
        if ending in UNSETTLED_ENDINGS:
            name = WorkflowExecutionStatus.Name(ending).removeprefix("WORKFLOW_EXECUTION_STATUS_")
            if ending in CLEANUP_FAILED_ENDINGS:
                why = f"its workflow ended {name}: its own refund failed after its retries"
                kind = "refund_failed"
            else:
                why, kind = f"its workflow ended {name} before settling", "stuck_generation"
            await self._abandon(conn, generation, why, described.run_id, kind, name)
        elif ending == WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_COMPLETED:
            log.error("workflow completed but its generation is still open", extra=context)

    async def _stop_if_stuck(
        self, conn: Any, generation: records.Generation, described: WorkflowExecutionDescription
    ) -> None:
        """A workflow running well past the generation's deadline (contract.STUCK_AFTER)
        cannot be running its own code, which stops at the deadline: its workflow task
        keeps failing (a bug) or no worker serves its queue. It is terminated, then settled
        and alerted as stuck; a slower one is left alone."""
        running_for = datetime.now(UTC) - described.start_time
        if running_for < self.stuck_after:
            return
        why = f"its workflow was still running after {running_for}, past its deadline"
        try:
            await self.temporal.get_workflow_handle(
                str(generation.id), run_id=described.run_id
            ).terminate(reason=f"stuck: {why}")
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:  # NOT_FOUND: it ended meanwhile
                raise
            return  # the next sweep sees how it ended
        await self._abandon(conn, generation, why, described.run_id, "stuck_generation", "STUCK")

    async def _abandon(
        self,
        conn: Any,
        generation: records.Generation,
        why: str,
        run_id: str | None,
        kind: str,
        ending: str,
    ) -> None:
        """Settle it (billing/settlement.py) and announce that, then stop its provider
        jobs and free their permits, then tell the owner (``kind``: infra/alerts.py;
        ``ending``: how its workflow ended, what the alerts' dedupe groups by)."""
        step = generation.step or "queued"
        try:
            settled = await settlement.settle(
                conn,
                generation.id,
                settlement.Ending(
                    status="failed", step=step, error_code="internal", message=INTERNAL_FAILURE
                ),
                settled_by="sweep",
                reason=why,
            )
        except settlement.Gone:
            return  # its account was deleted since this sweep read it
        except Exception as err:  # the next sweep tries again; the owner hears of it now
            await self._alert(
                generation,
                "refund_failed",
                source=f"sweep-refund:{generation.id}",
                title=f"Refund FAILED at {step}",
                error_class=type(err).__name__,
                error=f"the sweep could not settle it ({why}): {err}",
                refunded=False,
                run_id=run_id,
            )
            raise
        await progress.announce(self.redis, str(generation.id), settled.event)
        stopped, freed = await self._free_permits(conn, generation.id)
        context = {"generation_id": generation.id, "user_id": generation.user_id}
        log.error(
            "settled an abandoned generation: %s (permits freed: %d, provider jobs stopped: %d)",
            why,
            freed,
            stopped,
            extra=context,
        )
        await self._alert(
            generation,
            kind,
            source=f"sweep:{generation.id}",
            title=f"Refund FAILED at {step}"
            if kind == "refund_failed"
            else f"BitBuddy stuck at {step}",
            error_class=f"workflow {ending}",
            error=f"{why}; settled by the sweep; provider jobs stopped: {stopped}",
            refunded=settled.refunded,
            run_id=run_id,
        )

    async def _alert(
        self,
        generation: records.Generation,
        kind: str,
        *,
        source: str,
        title: str,
        error_class: str,
        error: str,
        refunded: bool,
        run_id: str | None,
    ) -> None:
        """Record and deliver an owner alert. One that cannot be delivered now stays
        recorded, and the alert digest delivers it: never a reason to stop the sweep."""
        alert = alerts.generation_alert(
            self.settings,
            kind,
            source_key=source,
            title=title,
            user_id=str(generation.user_id),
            generation_id=str(generation.id),
            step=generation.step or "queued",
            error_class=error_class,
            error=error,
            refunded=refunded,
            run_id=run_id,
        )
        try:
            await alerts.raise_alert(self.db, self.settings, alert)
        except Exception:
            log.warning(
                "could not deliver the owner's alert; the digest will",
                exc_info=True,
                extra={"generation_id": generation.id},
            )

    async def _free_permits(self, conn: Any, generation_id: UUID) -> tuple[int, int]:
        """Stop the jobs that still hold an ended generation's provider permits, freeing
        each permit once its job is known to be over; return (jobs stopped, permits freed).

        Known to be over: stopped now, or the provider says it already finished or never
        knew it. A job that may still run at the provider keeps its permit, or the cap
        would be exceeded; one the provider could not be asked about (unreachable, erring)
        is logged and tried again at the next sweep (``_free_permits_of_ended``). A permit
        with no job recorded under it cannot be asked about at all (the worker died
        between sending the job and recording it) and is freed.
        """
        stopped, over = 0, []
        for permit in await permits.generation_permits(conn, generation_id):
            if permit.app is None or permit.request_id is None:
                over.append(permit.holder)
                continue
            try:
                stopped += await asyncio.wait_for(
                    cancel_job(self.fal, permit.app, permit.request_id), STOP_JOB_SECONDS
                )
            except Exception:  # unreachable, erring, or slower than STOP_JOB_SECONDS
                log.warning(
                    "could not stop %s job %s; its permit is kept until it can be",
                    permit.app,
                    permit.request_id,
                    exc_info=True,
                    extra={"generation_id": generation_id},
                )
                continue
            over.append(permit.holder)
        freed = await permits.release_permits(conn, over) if over else 0
        self.report.permits_freed += freed
        return stopped, freed

    async def _free_permits_of_ended(self, conn: Any) -> None:
        """Permits still held by ended generations: their jobs could not be stopped at
        an earlier sweep."""
        for generation_id in await permits.ended_generations_holding_permits(conn):
            activity.heartbeat()
            stopped, freed = await self._free_permits(conn, generation_id)
            if freed:
                log.info(
                    "freed %d permits of an ended generation (%d jobs stopped)",
                    freed,
                    stopped,
                    extra={"generation_id": generation_id},
                )


class HousekeepingActivities:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    @activity.defn(name=contract.SEND_ALERT_DIGEST)
    async def send_alert_digest(self) -> DigestReport:
        """The owner alerts' digest (infra/alerts.py), run by its own schedule."""
        report = await alerts.send_digests(self.rt.db, self.rt.settings)
        if report.digests_sent or report.redelivered:
            activity.logger.info("alert digest: %s", report)
        return report

    @activity.defn(name=contract.SWEEP)
    async def sweep(self) -> SweepReport:
        report = await Sweeper(self.rt, activity.client()).sweep_once()
        if report.looked_at or report.permits_freed or report.files_discarded:
            activity.logger.info("swept: %s", report)
        return report
