"""Dependencies, as Annotated aliases. Every long-lived client is created once in the
lifespan (api/app.py) and reached through ``request.app.state``."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis
from temporalio.client import Client

from api.services.accounts import AccountService
from api.services.errors import CsrfRefused, NotAllowed, NotSignedIn
from api.services.generations import GenerationService
from infra.database import records
from infra.logging import add_log_context
from infra.settings import Settings
from infra.storage import Storage


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _pool(request: Request) -> AsyncConnectionPool[Any]:
    pool: AsyncConnectionPool[Any] = request.app.state.db
    return pool


async def _connection(request: Request) -> AsyncIterator[AsyncConnection[dict[str, Any]]]:
    """A connection for the length of the handler; callers commit what they write.

    Scoped to the handler function, not the request: FastAPI runs a ``yield``
    dependency's exit after the response is sent by default, which for an event stream
    is the end of the stream, so every open stream would hold a pooled connection and
    twenty viewers would starve the pool. Authentication shares this same connection
    (FastAPI resolves a dependency once per request).
    """
    async with request.app.state.db.connection() as conn:
        yield conn


def _redis(request: Request) -> Redis:
    redis: Redis = request.app.state.redis
    return redis


def _temporal(request: Request) -> Client:
    client: Client = request.app.state.temporal
    return client


def _storage(request: Request) -> Storage:
    storage: Storage = request.app.state.storage
    return storage


def _accounts(request: Request) -> AccountService:
    accounts: AccountService = request.app.state.accounts
    return accounts


def _generations(request: Request) -> GenerationService:
    generations: GenerationService = request.app.state.generations
    return generations


SettingsDep = Annotated[Settings, Depends(_settings)]
AccountsDep = Annotated[AccountService, Depends(_accounts)]
GenerationsDep = Annotated[GenerationService, Depends(_generations)]
PoolDep = Annotated[AsyncConnectionPool[Any], Depends(_pool)]
ConnDep = Annotated[AsyncConnection[dict[str, Any]], Depends(_connection, scope="function")]
RedisDep = Annotated[Redis, Depends(_redis)]
TemporalDep = Annotated[Client, Depends(_temporal)]
StorageDep = Annotated[Storage, Depends(_storage)]

_bearer = HTTPBearer(auto_error=False)
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]

# The browser session's cookie, and the header its pages send the CSRF token in.
SESSION_COOKIE = "bitbuddies_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Caller:
    """Who is asking, and with which credential: a bearer token (API clients) or a
    browser session (the web app)."""

    user: records.User
    token: str | None = None
    session_id: str | None = None
    csrf_token: str | None = None  # the browser session's, read with it
    device: bool = False  # a device token: no power over tokens, the password, the account


async def _caller(request: Request, credentials: BearerDep, conn: ConnDep) -> Caller:
    """A bearer token wins when sent. Otherwise the session cookie; a state-changing
    request on it must carry the session's CSRF token (a page of another site can make
    the browser send the cookie, but cannot read the token nor set the header without
    our CORS consent), and must not come from another origin."""
    if credentials is not None:
        if credentials.scheme.lower() != "bearer":
            raise NotSignedIn("Send your token as 'Authorization: Bearer <token>'.")
        bearer = await records.bearer(conn, credentials.credentials)
        if bearer is None:
            raise NotSignedIn("This token is unknown, revoked or expired; log in again.")
        add_log_context(user_id=str(bearer.user.id))  # on this request's log lines
        return Caller(bearer.user, token=credentials.credentials, device=bearer.device)
    session_id = request.cookies.get(SESSION_COOKIE)
    if not session_id:
        raise NotSignedIn("Log in, or send your token as 'Authorization: Bearer <token>'.")
    found = await records.session(conn, session_id)
    if found is None:
        raise NotSignedIn("Your session has ended; log in again.")
    add_log_context(user_id=str(found.user.id))
    if request.method not in SAFE_METHODS:
        origin = request.headers.get("origin")
        settings: Settings = request.app.state.settings
        if origin is not None and origin.rstrip("/") != _origin(settings.public_url):
            raise CsrfRefused("This request came from another site.")
        sent = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode(), found.csrf_token.encode()):
            raise CsrfRefused(f"Send the session's CSRF token in the {CSRF_HEADER} header.")
    return Caller(found.user, session_id=session_id, csrf_token=found.csrf_token)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


CurrentCaller = Annotated[Caller, Depends(_caller)]


async def _account_holder(caller: CurrentCaller) -> Caller:
    """A caller signed in with the password (a browser session or a log-in's token),
    not with a device token: only such a caller manages tokens, the password and the
    account, so a stolen device token cannot lock its owner out."""
    if caller.device:
        raise NotAllowed("A device token cannot do this; use the web app or log in.")
    return caller


AccountHolder = Annotated[Caller, Depends(_account_holder)]


async def _device_token(caller: CurrentCaller) -> str:
    """The device token the request came with: for what only a device does to itself
    (the extension unpairing)."""
    if not caller.device or caller.token is None:
        raise NotAllowed("Only a device token can do this; revoke devices from your account.")
    return caller.token


CurrentDeviceToken = Annotated[str, Depends(_device_token)]


async def _current_user(caller: CurrentCaller) -> records.User:
    return caller.user


CurrentUser = Annotated[records.User, Depends(_current_user)]


async def _current_user_alone(request: Request, credentials: BearerDep) -> records.User:
    """The same check on a connection of its own, given back at once: for a handler that
    does slow work (decoding a photo) before it needs the database again."""
    async with request.app.state.db.connection() as conn:
        return (await _caller(request, credentials, conn)).user


CurrentUserAlone = Annotated[records.User, Depends(_current_user_alone)]
