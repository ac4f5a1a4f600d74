"""The baseline: a workflow that runs N no-op activities one after another.

It is what the BitBuddy pipeline would cost if every activity did nothing: same Temporal
server, same SDK, same number of activities in sequence. ``python -m bench.bare`` runs
its worker in a process of its own, as the real worker runs.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from datetime import timedelta
from pathlib import Path

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

TASK_QUEUE = "bench-bare"


@activity.defn
async def noop() -> None:
    return None


@workflow.defn(name="BareBaseline")
class BareWorkflow:
    @workflow.run
    async def run(self, activities: int) -> int:
        for _ in range(activities):
            await workflow.execute_activity(noop, start_to_close_timeout=timedelta(seconds=30))
        return activities


async def _serve(address: str, ready_file: Path) -> None:
    client = await Client.connect(address)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # The same concurrency settings as the real worker's interactive task queue.
    async with Worker(
        client,
        task_queue=TASK_QUEUE,
        workflows=[BareWorkflow],
        activities=[noop],
        max_concurrent_activities=200,
    ):
        await asyncio.to_thread(ready_file.touch)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the baseline benchmark's worker.")
    parser.add_argument("--temporal-address", required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(_serve(args.temporal_address, args.ready_file))


if __name__ == "__main__":
    main()
