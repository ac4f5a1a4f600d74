"""Scale-out: two API processes and two worker processes per pool share one Temporal,
Redis and PostgreSQL (and the session's model server). A generation started through one
API process streams every event, once and in order, to a client of the other; one worker
of each pool SIGKILLed mid-run loses nothing: the other worker of its pool takes over.

The extra processes poll task queues of their own (every ``*_task_queue`` setting gets a
suffix), so the session's workers never take their tasks and each kill lands on work
only the two processes of its pool can do. While the test's housekeeping workers run,
the shared Temporal Schedules point at the test's housekeeping queue (a housekeeping
worker brings the schedules up to date when it starts); the teardown points them back
and ends any run left on that queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from psycopg_pool import AsyncConnectionPool
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import Client, WorkflowExecutionStatus

from activities.providers.local import APPS
from infra import supervisor
from infra.schedules import ensure_schedules, schedules
from infra.settings import Settings
from infra.worker import DEFAULT_POOLS, POOLS
from tests.conftest import TEST_ENV, Stack, permits_held
from tests.support.client import Event, User, signup
from tests.support.faults import assert_ledger_consistent, provider_requests, statuses, wait_until
from tests.support.photos import photo
from tests.support.steps import STEP_APPS
from workflows.bitbuddy import BitBuddyWorkflow
from workflows.contract import ANIMATE, HOUSEKEEPING_SCHEDULE, TRANSCODE

THROUGH_A = 4  # generations started through API A, followed on API B
THROUGH_B = 1  # and the other way round
HELD_SECONDS = 8.0  # the first two animate jobs run this much longer: the main kill lands then
CHILD_ENV = {
    # One encode at a time per media process: the test's transcodes queue up, so one is
    # running when the media kill comes, and they stay off the session's two cores.
    "BITBUDDIES_WORKER_MEDIA_ACTIVITIES": "1",
    # The teardown's SIGTERM ends a worker in a couple of seconds, not the default 20.
    "BITBUDDIES_WORKER_SHUTDOWN_GRACE_SECONDS": "2",
}

Pool = AsyncConnectionPool  # type: ignore[type-arg]


@dataclass
class Run:
    user: User  # of the API process the generation was started through
    watcher: User  # the same user, on the other API process
    generation_id: str
    stream: asyncio.Task[list[Event]]


def own_task_queues(tag: str) -> tuple[dict[str, str], Settings]:
    """The environment giving every task queue setting a name of its own (``-<tag>``),
    and the settings processes started with it read."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    session = Settings()
    env: dict[str, str] = {}
    values: dict[str, str] = {}
    for name, info in Settings.model_fields.items():
        if name.endswith("task_queue"):
            alias = info.validation_alias
            variable = alias if isinstance(alias, str) else f"{prefix}{name}".upper()
            values[name] = env[variable] = f"{getattr(session, name)}-{tag}"
    return env, Settings(**values)


def pid_of(identity: str) -> int:
    """The process id in a Temporal worker identity (the SDK's default: ``pid@host``)."""
    return int(identity.split("@", 1)[0])


def owner(processes: list[supervisor.Managed], identity: str) -> supervisor.Managed:
    """Which of ``processes`` the worker ``identity`` is (no other may hold this work)."""
    for process in processes:
        if process.process is not None and process.process.pid == pid_of(identity):
            return process
    raise AssertionError(f"{identity} is none of {[p.name for p in processes]}")


def crash(process: supervisor.Managed) -> None:
    """SIGKILL the process and its children (an ffmpeg encode), as a lost machine would:
    no cleanup runs. Each Managed process leads a process group of its own."""
    assert process.process is not None and process.alive, process.name
    os.killpg(process.process.pid, signal.SIGKILL)
    process.kill()  # reaps it
    process.stop()  # closes its log


async def start_all(processes: list[supervisor.Managed]) -> None:
    """Start them side by side; every start is over (ready or failed) on return."""
    results = await asyncio.gather(
        *(asyncio.to_thread(p.start) for p in processes), return_exceptions=True
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def stop_all(processes: Iterable[supervisor.Managed]) -> None:
    """Stop them side by side; one left frozen (a failed test) is let go on first."""
    for process in processes:
        if process.process is not None and process.alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.process.pid, signal.SIGCONT)
    await asyncio.gather(*(asyncio.to_thread(p.stop) for p in processes))


async def last_workflow_worker(temporal: Client, generation_id: str) -> str:
    """Who ran the generation's latest workflow task: the worker caching its workflow."""
    last = ""
    async for event in temporal.get_workflow_handle(generation_id).fetch_history_events():
        if event.HasField("workflow_task_started_event_attributes"):
            last = event.workflow_task_started_event_attributes.identity
    return last


async def running(temporal: Client, generation_id: str, activity: str) -> tuple[str, int]:
    """(worker identity, attempt) of the generation's ``activity`` running now, or ("", 0)."""
    description = await temporal.get_workflow_handle(generation_id).describe()
    for pending in description.raw_description.pending_activities:
        if (
            pending.activity_type.name == activity
            and pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
        ):
            return pending.last_worker_identity, pending.attempt
    return "", 0


async def recorded_starts(
    temporal: Client, generation_id: str, activity: str
) -> list[tuple[str, int]]:
    """(worker identity, attempt) of each recorded start of the generation's ``activity``.
    Temporal records the start of an activity's last attempt only."""
    scheduled: set[int] = set()
    starts: list[tuple[str, int]] = []
    async for event in temporal.get_workflow_handle(generation_id).fetch_history_events():
        if event.HasField("activity_task_scheduled_event_attributes"):
            if event.activity_task_scheduled_event_attributes.activity_type.name == activity:
                scheduled.add(event.event_id)
        elif event.HasField("activity_task_started_event_attributes"):
            started = event.activity_task_started_event_attributes
            if started.scheduled_event_id in scheduled:
                starts.append((started.identity, started.attempt))
    return starts


async def held_animate(models: httpx.AsyncClient, generation_ids: list[str]) -> str:
    """Wait until one of the generations' animate job runs (held by the delay fault)."""
    found: list[str] = []

    async def animating() -> bool:
        for record in await provider_requests(models):
            if record["app"] == APPS[ANIMATE.name] and record["status"] == "IN_PROGRESS":
                found.extend(g for g in generation_ids if g in str(record["arguments"]))
        return bool(found)

    await wait_until(animating, 90)
    return found[0]


async def freeze_a_transcode(
    temporal: Client, generation_ids: list[str], media: list[supervisor.Managed]
) -> tuple[supervisor.Managed, str, int]:
    """Find a transcode running on one of the ``media`` workers and stop (SIGSTOP) that
    worker with its encode, so it is certainly mid-transcode when it is killed: a look
    that no longer finds the transcode running after the stop (it had just ended) lets
    the worker go on (SIGCONT) and looks again. The frozen worker, the generation and the
    attempt it was running."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for generation_id in generation_ids:
            identity, attempt = await running(temporal, generation_id, TRANSCODE)
            if not identity:
                continue
            worker = owner(media, identity)
            assert worker.process is not None
            os.killpg(worker.process.pid, signal.SIGSTOP)
            await asyncio.sleep(0.5)  # an answer already on its way reaches Temporal
            if await running(temporal, generation_id, TRANSCODE) == (identity, attempt):
                return worker, generation_id, attempt
            os.killpg(worker.process.pid, signal.SIGCONT)
        await asyncio.sleep(0.05)
    raise AssertionError("no transcode seen running")


async def no_permit_held(db: Pool) -> bool:
    return await permits_held(db) == 0


async def housekeeping_ran_since(temporal: Client, since: datetime) -> bool:
    """A Housekeeping run its schedule started after ``since`` has completed."""
    info = (await temporal.get_schedule_handle(HOUSEKEEPING_SCHEDULE).describe()).info
    for result in info.recent_actions:
        if result.started_at > since:
            action = result.action
            handle = temporal.get_workflow_handle(
                action.workflow_id, run_id=action.first_execution_run_id
            )
            if (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED:
                return True
    return False


async def restore_schedules(temporal: Client, test_queue: str) -> None:
    """Point the schedules back at the session's housekeeping queue, and end any run
    left on the test's (nobody serves it now; it would hold its schedule's next runs)."""
    session = Settings()
    await ensure_schedules(temporal, session)
    for schedule_id in schedules(session):
        info = (await temporal.get_schedule_handle(schedule_id).describe()).info
        for action in info.running_actions:
            handle = temporal.get_workflow_handle(
                action.workflow_id, run_id=action.first_execution_run_id
            )
            with contextlib.suppress(Exception):  # it may have ended meanwhile
                if (await handle.describe()).task_queue == test_queue:
                    await handle.terminate(reason="the scale-out test is over")


async def test_two_apis_and_two_workers_a_pool_lose_nothing_when_one_worker_of_each_dies(
    stack: Stack,
    db: Pool,
    models: httpx.AsyncClient,  # resets the model server: no fault or record left over
) -> None:
    began = time.monotonic()
    queues, settings = own_task_queues(f"scaleout-{uuid.uuid4().hex[:6]}")
    pools = list(DEFAULT_POOLS)  # as the stack starts them (supervisor.workers)
    for pool in pools:  # the session's workers poll none of the test's queues
        assert POOLS[pool].task_queue(settings) != POOLS[pool].task_queue(Settings()), pool
    (main,) = (p for p in pools if BitBuddyWorkflow in POOLS[p].workflows)
    (media,) = (p for p in pools if POOLS[p].task_queue(settings) == settings.media_task_queue)
    (housekeeping,) = (p for p in pools if POOLS[p].keeps_schedules)

    # API A and every worker (their public URL, hence the provider's webhooks: A); API B.
    ports = dataclasses.replace(
        stack.cfg.ports, api=supervisor.free_port(), worker_metrics_base=0, worker_metrics={}
    )
    cfg_a = dataclasses.replace(
        stack.cfg, ports=ports, extra_env={**stack.cfg.extra_env, **queues, **CHILD_ENV}
    )
    cfg_b = dataclasses.replace(cfg_a, ports=dataclasses.replace(ports, api=supervisor.free_port()))
    workers = {pool: [supervisor.worker(cfg_a, pool, instance=n) for n in (1, 2)] for pool in pools}
    api_a, api_b = supervisor.api(cfg_a, instance=1), supervisor.api(cfg_b, instance=2)
    extra = [*itertools.chain.from_iterable(workers.values()), api_a, api_b]
    temporal = await Client.connect(stack.cfg.temporal_address)
    runs: list[Run] = []
    try:
        await start_all(extra)
        up = time.monotonic() - began
        fault = {"app": APPS[ANIMATE.name], "kind": "delay", "times": 2, "seconds": HELD_SECONDS}
        (await models.post("/_local/faults", json=fault)).raise_for_status()
        async with (
            httpx.AsyncClient(base_url=cfg_a.api_url, timeout=60) as a,
            httpx.AsyncClient(base_url=cfg_b.api_url, timeout=60) as b,
        ):
            for origin, other in [(a, b)] * THROUGH_A + [(b, a)] * THROUGH_B:
                user = await signup(origin)
                response = await user.generate(photo("astronaut.png"))
                assert response.status_code == 202, response.text
                generation_id = response.json()["id"]
                watcher = dataclasses.replace(user, http=other)
                stream = asyncio.create_task(watcher.events(generation_id))
                runs.append(Run(user, watcher, generation_id, stream))
            ids = [run.generation_id for run in runs]

            # The main pool: kill the worker caching a workflow whose animate job is held
            # (it comes back with a webhook: the other worker must carry on from there);
            # every other pool but media loses a worker at the same moment.
            held = await held_animate(models, ids)
            main_victim = owner(workers[main], await last_workflow_worker(temporal, held))
            killed_at = datetime.now(UTC)
            crash(main_victim)
            for pool in pools:
                if pool not in (main, media):
                    crash(workers[pool][0])

            # The media pool: kill the worker in the middle of a transcode.
            media_victim, transcoded, killed_attempt = await freeze_a_transcode(
                temporal, ids, workers[media]
            )
            crash(media_victim)

            async with asyncio.timeout(150):
                streams = await asyncio.gather(*(run.stream for run in runs))

            # Every stream ran to the end, each event once and in order.
            for run, events in zip(runs, streams, strict=True):
                assert [e.id for e in events] == list(range(1, len(events) + 1)), run
                assert events[-1].event == "completed", events[-1]
                assert all(e.event == "progress" for e in events[:-1]), events
                assert all(x.data != y.data for x, y in itertools.pairwise(events)), events
            assert set((await statuses(db, ids)).values()) == {"completed"}

            # Each character downloads through the API process its owner watched on.
            for run, events in zip(runs, streams, strict=True):
                character_id = events[-1].data["character_id"]
                answer = await run.watcher.http.get(
                    f"/v1/characters/{character_id}", headers=run.watcher.headers
                )
                assert answer.status_code == 200, answer.text
                for kind in ("webm", "webp", "png"):
                    asset = await run.watcher.http.get(answer.json()["assets"][kind])
                    assert asset.status_code == 200 and asset.content, (kind, asset.status_code)
                assert await run.watcher.balance() == int(TEST_ENV["BITBUDDIES_SIGNUP_TOKENS"]) - 1

        # One submission a step a generation at the provider (cancelled ones aside).
        records = await provider_requests(models)
        for run, events in zip(runs, streams, strict=True):
            submitted = Counter(
                r["app"]
                for r in records
                if run.generation_id in str(r["arguments"]) and r["status"] != "CANCELLED"
            )
            steps = {e.data["step"] for e in events} & STEP_APPS.keys()
            assert submitted == Counter(STEP_APPS[step] for step in steps), run.generation_id
        await wait_until(lambda: no_permit_held(db), 30)
        await assert_ledger_consistent(db, [run.user for run in runs])

        # The kills landed on work in flight, and the survivors finished it.
        (main_survivor,) = (w for w in workers[main] if w is not main_victim)
        assert owner(workers[main], await last_workflow_worker(temporal, held)) is main_survivor
        (media_survivor,) = (w for w in workers[media] if w is not media_victim)
        ((identity, attempt),) = await recorded_starts(temporal, transcoded, TRANSCODE)
        assert owner(workers[media], identity) is media_survivor
        assert attempt > killed_attempt
        await wait_until(lambda: housekeeping_ran_since(temporal, killed_at), 60)
        print(
            f"\nscale-out: {len(pools)} pools x 2 workers + 2 APIs up in {up:.1f}s;"
            f" {len(runs)} generations done in {time.monotonic() - began:.1f}s"
        )
    finally:
        for run in runs:
            run.stream.cancel()
        await stop_all(extra)
        await restore_schedules(temporal, POOLS[housekeeping].task_queue(settings))
