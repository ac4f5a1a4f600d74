"""The FastAPI application: one Temporal client, one Redis pool, one database pool and
one progress subscription per process, made in the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from redis.asyncio import Redis

from api import accounts, characters, files, generations, health, streams
from api.errors import install_error_handlers
from api.sweeper import Sweeper
from infra.database import open_pool
from infra.falclient import fal_client_from_settings
from infra.logging import configure_logging
from infra.settings import Settings, get_settings
from infra.storage import storage_from_settings
from infra.temporal import connect

log = logging.getLogger("bitbuddies.api")

DESCRIPTION = """
Turn a photo and a prompt into an animated, transparent cartoon character.

1. `POST /v1/auth/signup` or `/v1/auth/login` for a token; send it as
   `Authorization: Bearer <token>` on every other `/v1` route.
2. `POST /v1/generations` (multipart `photo` + `prompt`, optional `Idempotency-Key`) spends
   one token and answers 202 with an `events_url`.
3. Follow `events_url` (Server-Sent Events): `progress` events, then exactly one
   `completed` or `failed`. Reconnect with `Last-Event-ID` to resume.
4. `GET /v1/characters/{id}` gives signed URLs of the WebM, WebP and PNG.

Any failure after the charge refunds the token automatically.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.db = open_pool(settings.database_url, max_size=20)
        await app.state.db.open(wait=True)
        app.state.redis = Redis.from_url(settings.redis_url)
        app.state.temporal = await connect(settings)
        app.state.storage = storage_from_settings(settings)
        app.state.hub = streams.ProgressHub(app.state.redis)
        await app.state.hub.start()
        fal = fal_client_from_settings(settings)
        sweeper = asyncio.create_task(
            Sweeper(app.state.db, app.state.redis, app.state.temporal, fal, settings).run(),
            name="sweeper",
        )
        log.info("API ready at %s", settings.public_url)
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await app.state.hub.stop()
            await app.state.redis.aclose()
            await app.state.db.close()

    app = FastAPI(
        title="BitBuddies API", version="1.0.0", description=DESCRIPTION, lifespan=lifespan
    )
    install_error_handlers(app)
    for module in (health, accounts, generations, streams, characters, files):
        app.include_router(module.router)
    return app
