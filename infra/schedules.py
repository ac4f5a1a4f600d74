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


async def ensure_schedules(client: Client, settings: Settings) -> None:
    schedule = housekeeping(settings)
    try:
        await client.create_schedule(contract.HOUSEKEEPING_SCHEDULE, schedule)
        log.info("created schedule %s", contract.HOUSEKEEPING_SCHEDULE)
    except ScheduleAlreadyRunningError:

        def updated(_: ScheduleUpdateInput) -> ScheduleUpdate:
            return ScheduleUpdate(schedule=schedule)

        await client.get_schedule_handle(contract.HOUSEKEEPING_SCHEDULE).update(updated)
