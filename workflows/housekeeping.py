"""The Housekeeping workflow: background work, run by a Temporal Schedule on its own task
queue (infra/schedules.py) rather than by loops inside the API. Today one sweep
(activities/housekeeping.py): settle what a crash left open, free permits of ended
generations, delete working files past their retention.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows import contract
    from workflows.contract import SWEEP_OPTIONS, SweepReport


@workflow.defn(name=contract.HOUSEKEEPING_WORKFLOW)
class HousekeepingWorkflow:
    @workflow.run
    async def run(self) -> SweepReport:
        report: SweepReport = await workflow.execute_activity(
            contract.SWEEP, result_type=SweepReport, **SWEEP_OPTIONS
        )
        return report
