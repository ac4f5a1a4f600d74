"""Billing's reconciliation: what the ledger should hold and does not, found and fixed,
run by its own Temporal Schedule (``bitbuddies-reconcile``, every
``reconcile_interval_seconds``; workflows/reconcile.py, activities/reconcile.py).

It fixes two things, each through the code path that normally does it, so a fix and the
normal path can never both move money:

1. **A charge left unrefunded on a generation that ended badly.** A generation whose
   status is failed or cancelled, with no character, whose charge has no refund, and
   whose workflow (if Temporal has one) is not running: settled again with
   ``settlement.settle`` (``settled_by="reconcile"``), which refunds at most once
   whoever else refunds, and leaves the outcome and the terminal event that stand. How
   one comes about: data written by older code, a refund written apart from its outcome
   (the two-activity settle, activities/legacy.py) that never landed, a hand edit.
2. **A paid Checkout Session never credited.** Stripe lists the sessions complete and
   paid, created within ``PAID_WINDOW`` (``payments.paid_sessions``); each one we
   recorded (``checkout_sessions``) that is not yet paid is credited by
   ``payments.apply_checkout_event``, the webhook's own path, under the same ledger key
   (``ledger.purchase_key``): the webhook arriving later credits nothing more. One of a
   deleted account (nobody to credit) is refunded in full at Stripe instead
   (``payments.return_unowned``, keyed by the session: refunded once).

Then it checks the ledger's invariant (``ledger.check_invariant``), and tells the owner
in one ``reconciliation`` alert (infra/alerts.py) what it fixed and any violation, and
nothing when all was well.

**The sweep and the reconciliation divide the work by the generation's status.** The
housekeeping sweep (activities/housekeeping.py) looks only at *open* generations (queued
or running) that have not moved for ``stale_queued_seconds``: it starts one never
started (a workflow is better than a refund), and settles one whose workflow is gone,
ended without its cleanup, or is stuck past its deadline. So a charge stranded on an open
generation is the sweep's, and the reconciliation never touches an open generation (nor
one whose workflow still runs, whatever its row says). The reconciliation looks only at
generations already *ended* (failed, cancelled) whose charge has no refund, which no
sweep ever looks at again. A generation ended less than ``settle_after`` ago (by default
``stale_queued_seconds``) is left for the next run, so a settler still in flight finishes
first.

Every fix is idempotent: a run repeated (or racing another settler, or the webhook)
refunds and credits nothing more.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import stripe
from psycopg_pool import AsyncConnectionPool
from temporalio.api.enums.v1 import WorkflowExecutionStatus
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from billing import ledger, payments, settlement
from infra import alerts
from infra.database import billing as billing_repo
from infra.database.records import Conn
from infra.settings import Settings
from workflows.contract import INTERNAL_FAILURE, ReconcileReport

log = logging.getLogger("bitbuddies.reconcile")

SETTLED_BY = "reconcile"  # the refund's key: ledger.refund_key(generation, SETTLED_BY)
PAGE = 100
# Stripe retries a webhook for up to three days, and a session can be paid up to a day
# after it was created: a paid session older than this had its every chance.
PAID_WINDOW = timedelta(days=4)
# A session paid moments ago may have its webhook in flight: left to the next run.
PAID_GRACE = timedelta(minutes=10)
# The alert's list of ids is cut here (the log line has them all).
ALERT_IDS = 5


class Reconciler:
    def __init__(
        self,
        db: AsyncConnectionPool[Any],
        settings: Settings,
        temporal: Client,
        stripe_client: stripe.StripeClient | None,
        *,
        source_key: str,
        settle_after: timedelta | None = None,
        paid_grace: timedelta = PAID_GRACE,
        paid_window: timedelta = PAID_WINDOW,
        heartbeat: Callable[[], None] = lambda: None,
    ) -> None:
        """``source_key`` names this run's alert (one per run, whoever retries it)."""
        self.db = db
        self.settings = settings
        self.temporal = temporal
        self.stripe = stripe_client
        self.source_key = source_key
        self.settle_after = (
            settle_after
            if settle_after is not None
            else timedelta(seconds=settings.stale_queued_seconds)
        )
        self.paid_grace = paid_grace
        self.paid_window = paid_window
        self.heartbeat = heartbeat
        self.report = ReconcileReport()

    async def run(self) -> ReconcileReport:
        async with self.db.connection() as conn:
            await self._refund_orphans(conn)
            await self._credit_paid_sessions(conn)
            violations = await ledger.check_invariant(conn)
        self.report.violations = [str(v) for v in violations]
        log.log(
            logging.WARNING if self.report.fixed_anything or violations else logging.INFO,
            "reconciliation: refunded %d (%s), credited %d (%s), %d paid sessions checked%s,"
            " %d invariant violations",
            len(self.report.refunded),
            ", ".join(self.report.refunded) or "-",
            len(self.report.credited),
            ", ".join(self.report.credited) or "-",
            self.report.sessions_checked,
            "" if self.report.stripe_checked else " (Stripe NOT checked)",
            len(violations),
        )
        for violation in violations:
            log.error("ledger invariant: %s", violation)
        await self._tell_owner()
        return self.report

    # --- 1. charges left unrefunded ---------------------------------------------------

    async def _refund_orphans(self, conn: Conn) -> None:
        after = 0
        while True:
            page = await ledger.unrefunded_charges_of_ended(
                conn, after=after, ended_before=self.settle_after, limit=PAGE
            )
            for orphan in page:
                self.heartbeat()
                await self._refund(conn, orphan)
            if len(page) < PAGE:
                return
            after = page[-1].charge_id

    async def _refund(self, conn: Conn, orphan: ledger.OrphanedCharge) -> None:
        context = {"generation_id": orphan.generation_id, "user_id": orphan.user_id}
        if await self._workflow_running(orphan.generation_id):
            # Its row says it ended, yet its workflow runs: its own settle refunds.
            log.warning("an ended generation's workflow still runs; left to it", extra=context)
            return
        why = f"reconciliation: a {orphan.status} generation's charge was never refunded"
        try:
            await settlement.settle(
                conn,
                orphan.generation_id,
                settlement.Ending(
                    status=orphan.status,
                    step=orphan.step or "queued",
                    error_code=orphan.error_code or "internal",
                    message=INTERNAL_FAILURE,
                ),
                settled_by=SETTLED_BY,
                reason=why,
            )
        except settlement.Gone:
            return  # its account was deleted since
        refund = await ledger.refund_of(conn, orphan.charge_id)
        mine = ledger.refund_key(orphan.generation_id, SETTLED_BY)
        if refund is not None and refund.idempotency_key == mine:
            self.report.refunded.append(str(orphan.generation_id))
            log.warning("refunded a charge its settler missed: %s", why, extra=context)

    async def _workflow_running(self, generation_id: UUID) -> bool:
        try:
            described = await self.temporal.get_workflow_handle(str(generation_id)).describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return False
            raise
        status = described.raw_description.workflow_execution_info.status
        return bool(status == WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING)

    # --- 2. paid sessions never credited ----------------------------------------------

    async def _credit_paid_sessions(self, conn: Conn) -> None:
        if self.stripe is None:
            self.report.stripe_checked = False
            return
        now = datetime.now(UTC)
        try:
            paid = await payments.paid_sessions(self.stripe, created_since=now - self.paid_window)
        except payments.PaymentProviderError:
            log.warning("Stripe could not be asked for paid sessions; next run", exc_info=True)
            self.report.stripe_checked = False
            return
        self.report.sessions_checked = len(paid)
        for session in paid:
            self.heartbeat()
            if session.created > now - self.paid_grace:
                continue  # its webhook may be on its way
            row = await billing_repo.checkout(conn, session.id)
            if row is None or row.status == "paid":
                continue  # not ours, or credited
            context = {"checkout_session_id": session.id, "user_id": row.user_id}
            async with conn.transaction():
                move = await payments.apply_checkout_event(
                    conn, session.id, payments.SESSION_COMPLETED, "paid", session.payment_intent
                )
            if move is None:
                continue
            if move.unowned:
                if row.returned_refund is None:
                    await self._return_unowned(conn, move, context)
            elif move.credited and move.session.status != "paid":
                self.report.credited.append(session.id)
                log.warning(
                    "credited a paid checkout whose webhook never came (was %s)",
                    move.session.status,
                    extra=context,
                )

    async def _return_unowned(
        self, conn: Conn, move: payments.CheckoutMove, context: dict[str, Any]
    ) -> None:
        """A deleted account's paid checkout whose webhook never came: its money goes
        back (the webhook, if it comes, finds the refund recorded)."""
        assert self.stripe is not None
        try:
            async with conn.transaction():
                refund_id = await payments.return_unowned(self.stripe, conn, move)
        except payments.PaymentProviderError:
            log.warning("a deleted account's paid checkout cannot be refunded yet", extra=context)
            return
        self.report.returned.append(move.session.id)
        log.warning("refunded a deleted account's paid checkout (%s)", refund_id, extra=context)

    # --- 3. the owner -------------------------------------------------------------------

    async def _tell_owner(self) -> None:
        report = self.report
        if not report.fixed_anything and not report.violations:
            return
        parts = []
        if report.refunded:
            parts.append(f"refunded {len(report.refunded)}: {_ids(report.refunded)}")
        if report.credited:
            parts.append(f"credited {len(report.credited)} paid sessions: {_ids(report.credited)}")
        if report.returned:
            parts.append(
                f"refunded {len(report.returned)} paid sessions of deleted accounts at Stripe:"
                f" {_ids(report.returned)}"
            )
        if report.violations:
            parts.append(
                f"{len(report.violations)} ledger invariant violations (bitbuddies"
                f" check-ledger): {'; '.join(report.violations[:3])}"
            )
        fixed = "; ".join(parts)
        title = (
            f"Reconciliation: {len(report.refunded)} refunded, {len(report.credited)} credited"
            + (f", {len(report.violations)} LEDGER VIOLATIONS" if report.violations else "")
        )
        alert = alerts.reconciliation_alert(
            self.settings, source_key=self.source_key, what="billing", fixed=fixed, title=title
        )
        try:
            await alerts.raise_alert(self.db, self.settings, alert)
        except Exception:  # recorded: the digest delivers it
            log.warning(
                "could not deliver the reconciliation alert; the digest will", exc_info=True
            )


def _ids(ids: list[str]) -> str:
    more = f" and {len(ids) - ALERT_IDS} more" if len(ids) > ALERT_IDS else ""
    return ", ".join(ids[:ALERT_IDS]) + more
