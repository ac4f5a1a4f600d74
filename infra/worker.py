"""The worker processes: one per pool, each polling its own task queue.

``POOLS`` is the registry: for each pool, its task queue, its workflows, its activities
and how many activities it runs at once (a setting). Keeping the pools apart means a
burst of encodes on the media pool cannot starve the model polling and workflow tasks of
the interactive pool of CPU, a bulk job never takes an interactive worker's slots, and a
sweep never competes with any of them. ``make dev`` and the tests start one process per
pool but the optional ones (infra/supervisor.py); ``--pool`` may be given more than once
to run several pools in one process.

    interactive   the BitBuddy workflow of generations people wait for (priority 2); model
                  submit/poll/fetch/release; deliver, settle, alert. Its queue is still
                  "bitbuddies", the name it had when this pool was called "main": each
                  workflow's history names its task queue, so renaming the queue would
                  strand the workflows in flight across the deploy.
    batch         optional (``--pool batch``): the same workflow and activities for
                  generations started in bulk (workflows/lifecycle.py, priority 4), on
                  their own queue, "bitbuddies-batch". Nothing starts such generations
                  yet; the deploy files run it scaled down.
    media         transcode (ffmpeg), one encode per core by default; every generation's,
                  a batch one's behind any interactive one waiting (its priority)
    housekeeping  the Housekeeping workflow its Temporal Schedule starts, and its sweep;
                  the AlertDigest workflow (its own schedule) and its digest; the
                  Reconcile workflow (its own schedule) and billing's reconciliation;
                  this pool's worker brings the schedules up to date when it starts
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

from activities.runtime import Runtime, open_runtime
from infra import liveness, versioning
from infra.log_context import LogContextInterceptor, sandboxed_runner
from infra.logging import configure_logging
from infra.metrics import WorkerEndpoint
from infra.schedules import ensure_schedules
from infra.settings import Settings, get_settings
from infra.telemetry import configure_tracing, flush_tracing, worker_service, worker_tracing
from infra.temporal import connect
from workflows.alerts import AlertDigestWorkflow
from workflows.bitbuddy import BitBuddyWorkflow
from workflows.housekeeping import HousekeepingWorkflow
from workflows.reconcile import ReconcileWorkflow

log = logging.getLogger("bitbuddies.worker")


def _generation_activities(runtime: Runtime) -> list[Callable[..., Any]]:
    from activities.generations import GenerationActivities
    from activities.legacy import LegacyActivities
    from activities.models import ModelActivities

    models = ModelActivities(runtime)
    generations = GenerationActivities(runtime)
    legacy = LegacyActivities(runtime)
    return [
        models.submit_model_job,
        models.poll_model_job,
        models.check_model_job,
        models.fetch_model_result,
        models.release_model_job,
        generations.complete_generation,
        generations.settle_generation,
        generations.send_alert,
        legacy.refund_token,
        legacy.fail_generation,
    ]


def _media_activities(runtime: Runtime) -> list[Callable[..., Any]]:
    from activities.generations import GenerationActivities

    return [GenerationActivities(runtime).transcode]


def _housekeeping_activities(runtime: Runtime) -> list[Callable[..., Any]]:
    from activities.housekeeping import HousekeepingActivities
    from activities.reconcile import ReconcileActivities

    housekeeping = HousekeepingActivities(runtime)
    return [
        housekeeping.sweep,
        housekeeping.send_alert_digest,
        ReconcileActivities(runtime).reconcile,
    ]


@dataclass(frozen=True)
class Pool:
    name: str
    task_queue: Callable[[Settings], str]
    workflows: Sequence[type]
    activities: Callable[[Runtime], list[Callable[..., Any]]]
    concurrency: Callable[[Settings], int]  # activities at once, in one process
    keeps_schedules: bool = False
    # Not started unless named (``--pool``): not by ``make dev``, the tests, or a worker
    # run without ``--pool``. Its deploy files exist all the same.
    optional: bool = False


POOLS: dict[str, Pool] = {
    pool.name: pool
    for pool in (
        Pool(
            "interactive",
            task_queue=lambda s: s.task_queue,
            workflows=[BitBuddyWorkflow],
            activities=_generation_activities,
            concurrency=lambda s: s.worker_interactive_activities,
        ),
        Pool(
            "batch",
            task_queue=lambda s: s.batch_task_queue,
            workflows=[BitBuddyWorkflow],
            activities=_generation_activities,
            concurrency=lambda s: s.worker_batch_activities,
            optional=True,
        ),
        Pool(
            "media",
            task_queue=lambda s: s.media_task_queue,
            workflows=[],
            activities=_media_activities,
            concurrency=lambda s: s.worker_media_activities or max(1, os.cpu_count() or 1),
        ),
        Pool(
            "housekeeping",
            task_queue=lambda s: s.housekeeping_task_queue,
            workflows=[HousekeepingWorkflow, AlertDigestWorkflow, ReconcileWorkflow],
            activities=_housekeeping_activities,
            concurrency=lambda s: s.worker_housekeeping_activities,
            keeps_schedules=True,
        ),
    )
}
# What runs when no pool is named.
DEFAULT_POOLS: list[str] = [name for name, pool in POOLS.items() if not pool.optional]


def _worker(client: Client, settings: Settings, runtime: Runtime, pool: Pool) -> Worker:
    return Worker(
        client,
        task_queue=pool.task_queue(settings),
        workflows=list(pool.workflows),
        activities=pool.activities(runtime),
        max_concurrent_activities=pool.concurrency(settings),
        # On SIGTERM: polls hand their place back at once (activities/models.py); the
        # other activities (a submit, a fetch, a transcode) get this long to finish before
        # they are cancelled and retried elsewhere.
        graceful_shutdown_timeout=timedelta(seconds=settings.worker_shutdown_grace_seconds),
        # Spans continuing the client's trace, then whose work each log line is.
        interceptors=[worker_tracing(), LogContextInterceptor()],
        workflow_runner=sandboxed_runner(),
        # With BITBUDDIES_WORKER_BUILD_ID: this build's version of the Worker Deployment,
        # tasks only once it is current; AUTO_UPGRADE (infra/versioning.py). Else unversioned.
        deployment_config=versioning.deployment_config(settings),
    )


async def run_worker(
    settings: Settings, pool_names: Sequence[str], ready_file: Path | None = None
) -> None:
    pools = [POOLS[name] for name in pool_names]
    metrics = WorkerEndpoint.open(settings)  # None unless BITBUDDIES_WORKER_METRICS_ADDRESS
    client = await connect(settings, metrics.temporal if metrics else None)
    async with open_runtime(settings) as runtime, AsyncExitStack() as running:
        if metrics is not None:
            running.callback(metrics.close)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if any(pool.keeps_schedules for pool in pools):
            await ensure_schedules(client, settings)
        for pool in pools:
            await running.enter_async_context(_worker(client, settings, runtime, pool))
        queues = [pool.task_queue(settings) for pool in pools]
        identity = f"{socket.gethostname()}:{os.getpid()}"
        await running.enter_async_context(liveness.beating(runtime.redis, queues, identity))
        this = versioning.version(settings)
        log.info(
            "worker polling %s on %s as %s (models: %s)",
            ", ".join(
                f"{p.task_queue(settings)} ({p.concurrency(settings)} at once)" for p in pools
            ),
            settings.temporal_address,
            this.to_canonical_string() if this else "unversioned",
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
    parser = argparse.ArgumentParser(description="Run a BitBuddies Temporal worker.")
    parser.add_argument(
        "--pool",
        action="append",
        choices=sorted(POOLS),
        help="the pool(s) to run (repeatable); default: every pool but the optional"
        f" ones ({', '.join(n for n in POOLS if n not in DEFAULT_POOLS)}) in this one process",
    )
    parser.add_argument("--ready-file", type=Path, default=None)
    args = parser.parse_args()
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    pools = args.pool or DEFAULT_POOLS
    configure_tracing(settings, worker_service(pools))
    asyncio.run(run_worker(settings, pools, args.ready_file))
    flush_tracing()


if __name__ == "__main__":
    main()
