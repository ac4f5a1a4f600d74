"""What activities need from the outside world, built once per worker process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import fal_client
import httpx
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from activities.providers.fal import client_for
from infra.database import open_pool
from infra.settings import Settings
from infra.storage import Storage, storage_from_settings

REDIS_TIMEOUT_SECONDS = 5.0


@dataclass
class Runtime:
    settings: Settings
    db: AsyncConnectionPool[Any]
    redis: Redis
    storage: Storage
    fal: fal_client.AsyncClient
    # Downloads of provider outputs; one client, so connections and TLS setup are reused.
    http: httpx.AsyncClient


@asynccontextmanager
async def open_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    db = open_pool(settings.database_url, max_size=20)
    await db.open(wait=True)
    # Timeouts, so a Redis that hangs (rather than refuses) cannot hold a step up: Redis
    # only carries wake-ups and liveness beats here, both best effort.
    redis = Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
    )
    http = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0), follow_redirects=True)
    try:
        yield Runtime(
            settings=settings,
            db=db,
            redis=redis,
            storage=storage_from_settings(settings),
            fal=client_for(settings),
            http=http,
        )
    finally:
        await http.aclose()
        await redis.aclose()
        await db.close()
