"""A rolling deploy with Worker Versioning: a generation started on one build finishes on
the next, as a deploy does it (README, "Rolling deploys").

On a task queue of its own (the session's workers never see its tasks), in a Worker
Deployment of its own: build v1's worker runs and is promoted; build v2's worker starts
and takes nothing while v1 is current; a user's generation is held mid-step (a delay on
the animate model); ``bitbuddies promote-version v2`` makes v2 current and v1 is stopped
(SIGTERM, as a deploy does). The generation (AUTO_UPGRADE) moves to v2 and completes: its
history shows workflow tasks completed by v1, then by v2 only, and both processes ran its
activities; the character is delivered and the token charged once. The transcode runs
on the session's unversioned media worker: a versioned workflow's activities on a queue
outside its version go to that queue's own workers."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from activities.providers.local import APPS
from infra import supervisor
from infra.worker import POOLS
from tests.conftest import Stack, ledger_kinds
from tests.support.client import signup
from tests.support.faults import job_running, wait_until
from tests.support.photos import photo
from workflows.bitbuddy import BitBuddyWorkflow
from workflows.contract import ANIMATE

Pool = AsyncConnectionPool  # type: ignore[type-arg]
# The pool that runs the BitBuddy workflow and its model steps.
POOL = next(name for name, pool in POOLS.items() if BitBuddyWorkflow in pool.workflows)


@dataclasses.dataclass
class Release:
    """This test's corner of the stack: its task queue and Worker Deployment."""

    stack: Stack
    queue: str
    deployment: str
    started: list[supervisor.Managed]

    def cfg(self, **env: str) -> supervisor.StackConfig:
        """The stack's config on this queue, with worker metrics ports of its own."""
        return dataclasses.replace(
            self.stack.cfg,
            ports=dataclasses.replace(self.stack.cfg.ports, worker_metrics={}),
            extra_env={
                **self.stack.cfg.extra_env,
                "BITBUDDIES_TASK_QUEUE": self.queue,
                "BITBUDDIES_WORKER_DEPLOYMENT": self.deployment,
                **env,
            },
        )

    def worker(self, build_id: str) -> supervisor.Managed:
        worker = supervisor.worker(self.cfg(BITBUDDIES_WORKER_BUILD_ID=build_id), POOL)
        worker.name = f"worker-{POOL}-{build_id}"
        worker.log_path = self.stack.cfg.data_dir / "logs" / f"versioning-{build_id}.log"
        self.started.append(worker)
        worker.start()
        return worker

    def api(self) -> str:
        cfg = self.cfg()
        cfg.ports.api = supervisor.free_port()
        api = supervisor.api(cfg)
        api.log_path = self.stack.cfg.data_dir / "logs" / "versioning-api.log"
        self.started.append(api)
        api.start()
        return cfg.api_url

    async def promote(self, build_id: str) -> str:
        """`bitbuddies promote-version`, as a deploy runs it; its output."""
        env = {**os.environ, **self.cfg().app_env()}
        cli = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "infra.cli", "promote-version", build_id),
            *("--pool", POOL, "--timeout", "60s"),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await cli.communicate()
        assert cli.returncode == 0, out.decode()
        return out.decode()


@pytest.fixture
async def release(stack: Stack) -> AsyncIterator[Release]:
    tag = uuid.uuid4().hex[:8]
    release = Release(stack, f"versioning-{tag}", f"versioning-{tag}", [])
    try:
        yield release
    finally:
        for process in reversed(release.started):
            process.stop()


def _pid_of(worker: supervisor.Managed) -> int:
    assert worker.process is not None
    return worker.process.pid


async def test_a_generation_started_on_one_build_finishes_on_the_next(
    stack: Stack, models: httpx.AsyncClient, db: Pool, release: Release
) -> None:
    v1 = release.worker("v1")
    assert "(was unversioned workers)" in await release.promote("v1")
    api_url = release.api()
    v2 = release.worker("v2")  # polls, but takes nothing while v1 is current

    async with httpx.AsyncClient(base_url=api_url, timeout=60) as http:
        user = await signup(http)
        held = {"app": APPS[ANIMATE.name], "kind": "delay", "times": 1, "seconds": 8}
        (await models.post("/_local/faults", json=held)).raise_for_status()
        started = await user.generate(photo("astronaut.png"))
        assert started.status_code == 202, started.text
        generation_id = started.json()["id"]

        await wait_until(
            lambda: job_running(models, APPS[ANIMATE.name], generation_id), timeout=120
        )
        promoted = await release.promote("v2")
        assert f"current version: {release.deployment}.v2" in promoted, promoted
        assert f"(was {release.deployment}.v1)" in promoted, promoted
        await asyncio.to_thread(v1.stop)

        async with asyncio.timeout(180):
            events = await user.watch(generation_id)
        assert events[-1].event == "completed", events[-1]
        character_id = events[-1].data["character_id"]
        assert (await user.generation(generation_id))["status"] == "completed"
        character = await http.get(f"/v1/characters/{character_id}", headers=user.headers)
        assert character.status_code == 200, character.text
        webm = await http.get(character.json()["assets"]["webm"])
        assert webm.status_code == 200 and webm.content

    assert await ledger_kinds(db, generation_id) == ["charge"]

    temporal = await Client.connect(stack.cfg.temporal_address)
    history = await temporal.get_workflow_handle(generation_id).fetch_history()
    builds: list[str] = []
    activity_workers: set[str] = set()
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            version = event.workflow_task_completed_event_attributes.deployment_version
            assert version.deployment_name == release.deployment, version
            builds.append(version.build_id)
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            activity_workers.add(event.activity_task_started_event_attributes.identity)
    # v1 until the promotion, v2 from then on: never back, never unversioned.
    switch = builds.index("v2")
    assert switch > 0 and set(builds[:switch]) == {"v1"} and set(builds[switch:]) == {"v2"}
    pids = {identity.partition("@")[0] for identity in activity_workers}
    assert {str(_pid_of(v1)), str(_pid_of(v2))} <= pids, (activity_workers, v1, v2)
    assert history.events[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED
