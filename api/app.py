"""The FastAPI application: one Temporal client, one Redis pool, one database pool and
one progress subscription per process, made in the lifespan."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import httpx
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from redis.asyncio import BlockingConnectionPool, Redis

from api import (
    accounts,
    billing,
    characters,
    extension,
    files,
    generations,
    health,
    ledger,
    metrics,
    providers,
    shared,
    streams,
    tokens,
)
from api.docs import install_docs
from api.errors import install_error_handlers
from api.extension import ExtensionCors, extension_origins
from api.limits import Limits
from api.middleware import (
    MULTIPART_OVERHEAD,
    BodyLimit,
    HostGuard,
    RequestContext,
    SecurityHeaders,
)
from api.pages import install_pages
from api.services.accounts import AccountService
from api.services.billing import BillingService
from api.services.generations import GenerationService
from api.services.passwords import Passwords
from api.services.providers import ProviderWebhookService
from billing.payments import stripe_client
from infra.database import open_pool
from infra.falwebhooks import JwksCache
from infra.logging import configure_logging
from infra.metrics import PERMITS
from infra.settings import Settings, get_settings
from infra.storage import storage_from_settings
from infra.telemetry import API_SERVICE, configure_tracing, flush_tracing
from infra.temporal import connect

log = logging.getLogger("bitbuddies.api")
REDIS_CLIENT_NAME = "bitbuddies-api"  # how its connections show in CLIENT LIST
REDIS_WAIT_SECONDS = 10.0  # for a free pooled connection, then a RedisError
JWKS_FETCH_SECONDS = 10.0  # fetching the provider's webhook keys

DESCRIPTION = """
Turn a photo and a prompt into an animated, transparent cartoon character.

1. `POST /v1/auth/signup` or `/v1/auth/login` for a token; send it as
   `Authorization: Bearer <token>` on every other `/v1` route.
2. `POST /v1/generations` (multipart `photo` + `prompt`, optional `Idempotency-Key`) spends
   one token and answers 202 with an `events_url`.
3. Follow `events_url` (Server-Sent Events): `progress` events, then exactly one
   `completed`, `failed` or `cancelled`. Reconnect with `Last-Event-ID` to resume.
   `POST /v1/generations/{id}/cancel` stops it (refunded).
4. `GET /v1/characters/{id}` gives signed URLs of the WebM, WebP and PNG.

Any failure after the charge refunds the token automatically.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)
    configure_tracing(settings, API_SERVICE)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.db = open_pool(settings.database_url, max_size=20)
        await app.state.db.open(wait=True)
        # A bounded pool: when a thousand streams wake at once they take turns on these
        # connections instead of opening one each (past Redis's client limit, the
        # streams beyond it failed and were cut off).
        app.state.redis = Redis.from_pool(
            BlockingConnectionPool.from_url(
                settings.redis_url,
                max_connections=settings.api_redis_connections,
                timeout=REDIS_WAIT_SECONDS,
                client_name=REDIS_CLIENT_NAME,
            )
        )
        app.state.temporal = await connect(settings)
        app.state.storage = storage_from_settings(settings)
        app.state.limits = Limits.from_settings(settings)
        passwords = Passwords(
            concurrency=settings.password_hash_concurrency,
            max_wait=settings.password_hash_max_wait_seconds,
        )
        app.state.accounts = AccountService(app.state.db, settings, passwords)
        app.state.generations = GenerationService(
            app.state.db, app.state.storage, app.state.temporal, settings
        )
        app.state.billing = BillingService(app.state.db, settings, stripe_client(settings))
        app.state.http = httpx.AsyncClient(timeout=JWKS_FETCH_SECONDS)
        app.state.provider_webhooks = ProviderWebhookService(
            app.state.db,
            app.state.temporal,
            JwksCache(settings.webhook_jwks_url, client=app.state.http),
        )
        app.state.hub = streams.ProgressHub(app.state.redis, app.state.db)
        await app.state.hub.start()
        PERMITS.read_from(app.state.db, asyncio.get_running_loop())  # for /metrics
        # Everything made so far (modules, clients, pools) lives as long as the process:
        # keep it out of the collector's full passes, which otherwise walk it all and
        # stall every stream and request while they do.
        gc.freeze()
        log.info("API ready at %s", settings.public_url)
        try:
            yield
        finally:
            PERMITS.read_from(None, None)
            await app.state.hub.stop()
            await app.state.http.aclose()
            await app.state.redis.aclose()
            await app.state.db.close()
            await asyncio.to_thread(flush_tracing)  # uvicorn's exit skips exit handlers

    app = FastAPI(
        title="BitBuddies API",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # Server spans are RequestContext's (api/middleware.py), which records no path.
        telemetry={"tracing": False},
    )
    install_error_handlers(app)
    install_docs(app)
    for module in (
        health,
        accounts,
        tokens,
        generations,
        streams,
        characters,
        ledger,
        shared,
        extension,
        files,
        providers,
        billing,
        metrics,
    ):
        app.include_router(module.router)
    install_pages(app)
    _install_middleware(app, settings)
    return app


def _install_middleware(app: FastAPI, settings: Settings) -> None:
    """Outermost last: the host and size checks run before anything else reads the
    request; RequestContext gives each request its id, log context and span, and answers
    an unhandled error with our 500; outside them all, security headers go on every
    answer, errors included."""
    upload_limit = settings.max_upload_bytes + MULTIPART_OVERHEAD

    def limit_for(method: str, path: str) -> int:
        if method == "POST" and path.rstrip("/") == "/v1/generations":
            return upload_limit
        return settings.max_body_bytes

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"],
            max_age=600,
        )
    app.add_middleware(BodyLimit, limit_for=limit_for)
    # Outside the body limit, so the extension can read a 413 too.
    app.add_middleware(ExtensionCors, origins=extension_origins(settings.extension_ids))
    public_host = (urlsplit(settings.public_url).hostname or "").lower()
    app.add_middleware(
        HostGuard,
        allowed_hosts=(
            frozenset({public_host, *(h.lower() for h in settings.allowed_hosts)})
            if settings.environment == "production"
            else None
        ),
        placeholder_secret=settings.uses_placeholder_secret,
    )
    app.add_middleware(RequestContext)  # request id, log context, server span; its 500s
    app.add_middleware(SecurityHeaders, hsts=urlsplit(settings.public_url).scheme == "https")
