"""The Temporal Schedules that run background work, created (or brought up to date) by
every worker when it starts: idempotent, so any number of workers may do it at once."""

from __future__ import annotations

import logging
from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)

from infra.settings import Settings
from workflows import contract

log = logging.getLogger("bitbuddies.schedules")


def _every(settings: Settings, workflow: str, schedule_id: str, seconds: float) -> Schedule:
    """Start ``workflow`` on the housekeeping queue every ``seconds``. A run still going
    when the next is due makes that one skip: never two at once."""
    return Schedule(
        action=ScheduleActionStartWorkflow(
            workflow,
            id=schedule_id,  # Temporal appends each run's time
            task_queue=settings.housekeeping_task_queue,
            execution_timeout=timedelta(minutes=15),
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(seconds=seconds))]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


def schedules(settings: Settings) -> dict[str, Schedule]:
    """Every schedule, by id: the housekeeping sweep (activities/housekeeping.py), the
    owner alerts' digest (infra/alerts.py) and billing's reconciliation
    (billing/reconcile.py), each at its setting's interval."""
    every = {
        (contract.HOUSEKEEPING_WORKFLOW, contract.HOUSEKEEPING_SCHEDULE): (
            settings.sweep_interval_seconds
        ),
        (contract.ALERT_DIGEST_WORKFLOW, contract.ALERT_DIGEST_SCHEDULE): (
            settings.alert_digest_interval_seconds
        ),
        (contract.RECONCILE_WORKFLOW, contract.RECONCILE_SCHEDULE): (
            settings.reconcile_interval_seconds
        ),
    }
    return {
        schedule_id: _every(settings, workflow, schedule_id, seconds)
        for (workflow, schedule_id), seconds in every.items()
    }


async def ensure_schedules(client: Client, settings: Settings) -> None:
    for schedule_id, schedule in schedules(settings).items():
        await _ensure(client, schedule_id, schedule)


async def _ensure(client: Client, schedule_id: str, schedule: Schedule) -> None:
    try:
        await client.create_schedule(schedule_id, schedule)
        log.info("created schedule %s", schedule_id)
    except ScheduleAlreadyRunningError:

        def updated(_: ScheduleUpdateInput) -> ScheduleUpdate:
            return ScheduleUpdate(schedule=schedule)

        await client.get_schedule_handle(schedule_id).update(updated)
