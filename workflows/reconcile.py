"""The Reconcile workflow: billing's reconciliation (billing/reconcile.py: refunds
charges their settlers missed, credits paid Checkout Sessions whose webhook never came,
checks the ledger's invariant, tells the owner), started by its own Temporal Schedule
(infra/schedules.py) on the housekeeping queue. One activity; orchestration only."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows import contract
    from workflows.contract import RECONCILE_OPTIONS, ReconcileReport


@workflow.defn(name=contract.RECONCILE_WORKFLOW)
class ReconcileWorkflow:
    @workflow.run
    async def run(self) -> ReconcileReport:
        report: ReconcileReport = await workflow.execute_activity(
            contract.RECONCILE, result_type=ReconcileReport, **RECONCILE_OPTIONS
        )
        return report
