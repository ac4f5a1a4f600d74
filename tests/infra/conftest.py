"""What the infra tests share: Temporal's time-skipping test server, for the tests that
run a real worker without a stack (log context, tracing)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.workflows.conftest import _start_env


@pytest.fixture(scope="session")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    env = await _start_env()
    try:
        yield env
    finally:
        await env.shutdown()
