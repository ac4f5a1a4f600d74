"""The worker process: runs the workflows and every activity.

Three task queues: the main one (the BitBuddy workflow and I/O-bound activities, many at
once), a media queue for ffmpeg, capped at one encode per core so a burst of finishing
generations cannot starve the workflow tasks of CPU, and the housekeeping queue, where
the Housekeeping workflow that a Temporal Schedule starts runs its sweep. Each worker
brings the schedules up to date when it starts (infra/schedules.py).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
from pathlib import Path

from temporalio.worker import Worker

from activities.generations import all_activities
from activities.housekeeping import HousekeepingActivities
from activities.runtime import open_runtime
from infra import liveness
from infra.logging import configure_logging
from infra.schedules import ensure_schedules
from infra.settings import Settings, get_settings
from infra.temporal import connect
from workflows.bitbuddy import BitBuddyWorkflow
from workflows.housekeeping import HousekeepingWorkflow

log = logging.getLogger("bitbuddies.worker")


async def run_worker(settings: Settings, ready_file: Path | None = None) -> None:
    client = await connect(settings)
    async with open_runtime(settings) as runtime:
        main_activities, media_activities = all_activities(runtime)
        housekeeping = Worker(
            client,
            task_queue=settings.housekeeping_task_queue,
            workflows=[HousekeepingWorkflow],
            activities=[HousekeepingActivities(runtime).sweep],
            max_concurrent_activities=1,
        )
        main = Worker(
            client,
            task_queue=settings.task_queue,
            workflows=[BitBuddyWorkflow],
            activities=main_activities,
            max_concurrent_activities=200,
        )
        media = Worker(
            client,
            task_queue=settings.media_task_queue,
            activities=media_activities,
            max_concurrent_activities=max(1, os.cpu_count() or 1),
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        identity = f"{socket.gethostname()}:{os.getpid()}"
        queues = [settings.task_queue, settings.media_task_queue, settings.housekeeping_task_queue]
        await ensure_schedules(client, settings)
        async with main, media, housekeeping, liveness.beating(runtime.redis, queues, identity):
            log.info(
                "worker polling %s on %s (models: %s)",
                ", ".join(queues),
                settings.temporal_address,
                "fal.ai" if not settings.uses_local_models else settings.model_server_url,
            )
            if ready_file is not None:
                await asyncio.to_thread(_touch, ready_file)
            await stop.wait()
            log.info("worker stopping: finishing running activities")


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the BitBuddies Temporal worker.")
    parser.add_argument("--ready-file", type=Path, default=None)
    args = parser.parse_args()
    settings = get_settings()
    configure_logging(settings.log_level)
    asyncio.run(run_worker(settings, args.ready_file))


if __name__ == "__main__":
    main()
