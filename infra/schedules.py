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


def housekeeping(settings: Settings) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            contract.HOUSEKEEPING_WORKFLOW,
            id=contract.HOUSEKEEPING_SCHEDULE,  # Temporal appends each run's time
            task_queue=settings.housekeeping_task_queue,
            execution_timeout=timedelta(minutes=15),
        ),
        spec=ScheduleSpec(
            intervals=[
                ScheduleIntervalSpec(every=timedelta(seconds=settings.sweep_interval_seconds))
            ]
        ),
        # A sweep still going when the next is due: skip the next, never run two at once.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


def alert_digest(settings: Settings) -> Schedule:
    """The owner alerts' digest (infra/alerts.py): one message per group of suppressed
    alerts, every ``alert_digest_interval_seconds``."""
    return Schedule(
        action=ScheduleActionStartWorkflow(
            contract.ALERT_DIGEST_WORKFLOW,
            id=contract.ALERT_DIGEST_SCHEDULE,  # Temporal appends each run's time
            task_queue=settings.housekeeping_task_queue,
            execution_timeout=timedelta(minutes=15),
        ),
        spec=ScheduleSpec(
            intervals=[
                ScheduleIntervalSpec(
                    every=timedelta(seconds=settings.alert_digest_interval_seconds)
                )
            ]
        ),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


def reconcile(settings: Settings) -> Schedule:
    """Billing's reconciliation (billing/reconcile.py), every
    ``reconcile_interval_seconds``; a run still going makes the next one skip."""
    return Schedule(
        action=ScheduleActionStartWorkflow(
            contract.RECONCILE_WORKFLOW,
            id=contract.RECONCILE_SCHEDULE,  # Temporal appends each run's time
            task_queue=settings.housekeeping_task_queue,
            execution_timeout=timedelta(minutes=15),
        ),
        spec=ScheduleSpec(
            intervals=[
                ScheduleIntervalSpec(every=timedelta(seconds=settings.reconcile_interval_seconds))
            ]
        ),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


def schedules(settings: Settings) -> dict[str, Schedule]:
    """Every schedule, by id."""
    return {
        contract.HOUSEKEEPING_SCHEDULE: housekeeping(settings),
        contract.ALERT_DIGEST_SCHEDULE: alert_digest(settings),
        contract.RECONCILE_SCHEDULE: reconcile(settings),
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
