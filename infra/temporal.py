"""One way to reach Temporal, shared by the API, the worker and the tests."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.runtime import Runtime

from infra.settings import Settings
from infra.telemetry import ClientTracing


async def connect(settings: Settings, runtime: Runtime | None = None) -> Client:
    """``runtime``: the SDK runtime to run on (a worker's, which exports the SDK's metrics:
    infra/metrics.py); the SDK's default one when None."""
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        runtime=runtime,
        # Client spans (StartWorkflow, ...) whose trace the workers continue: infra/telemetry.py.
        interceptors=[ClientTracing()],
    )
