"""The AlertDigest workflow: the owner alerts' digest (infra/alerts.py ``send_digests``),
started by its own Temporal Schedule (infra/schedules.py) on the housekeeping queue. One
activity; orchestration only."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows import contract
    from workflows.contract import ALERT_DIGEST_OPTIONS, DigestReport


@workflow.defn(name=contract.ALERT_DIGEST_WORKFLOW)
class AlertDigestWorkflow:
    @workflow.run
    async def run(self) -> DigestReport:
        report: DigestReport = await workflow.execute_activity(
            contract.SEND_ALERT_DIGEST, result_type=DigestReport, **ALERT_DIGEST_OPTIONS
        )
        return report
