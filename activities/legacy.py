"""Activities kept for workflows whose histories predate the one-transaction settle.

Before ``SETTLE_PATCH`` (workflows/bitbuddy.py) the workflow refunded in one activity and
recorded the ending in a second. A workflow that started on that code replays the old
branch and schedules these by name, so workers keep them registered until no such
workflow can still be running; then the patch is deprecated (README, "Changing workflow
code") and this module goes. Both write through billing/settlement.py.
"""

from __future__ import annotations

from uuid import UUID

from temporalio import activity

from activities.runtime import Runtime
from billing import settlement
from infra import progress
from workflows import contract
from workflows.contract import FailInput, RefundInput, RefundResult


class LegacyActivities:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    @activity.defn(name=contract.REFUND_TOKEN)
    async def refund_token(self, refund: RefundInput) -> RefundResult:
        async with self.rt.db.connection() as conn, conn.transaction():
            refunded = await settlement.refund_charge(
                conn,
                UUID(refund.generation_id),
                idempotency_key=refund.idempotency_key,
                reason=refund.reason,
            )
        return RefundResult(refunded=refunded, ledger_entry_id=None)

    @activity.defn(name=contract.FAIL_GENERATION)
    async def fail_generation(self, failure: FailInput) -> None:
        ending = settlement.Ending(
            status=failure.status,
            step=failure.step,
            error_code=failure.error_code,
            message=failure.message,
            percent=failure.percent,
        )
        try:
            async with self.rt.db.connection() as conn:
                terminal = await settlement.record_ending(
                    conn,
                    UUID(failure.generation_id),
                    ending,
                    message=failure.message,
                    refunded=failure.refunded,
                )
        except settlement.Gone:
            activity.logger.info("not recorded: the account was deleted")
            return
        await progress.announce(self.rt.redis, failure.generation_id, terminal)
