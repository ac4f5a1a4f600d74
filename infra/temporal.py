"""One way to reach Temporal, shared by the API, the worker and the tests."""

from __future__ import annotations

from temporalio.client import Client

from infra.settings import Settings


async def connect(settings: Settings) -> Client:
    return await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
