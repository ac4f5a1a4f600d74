"""The Chrome extension's side of the API: its ids, for the web app to message it, and
the CORS it gets.

The extension calls the API from its own origin, ``chrome-extension://<id>``, with a
device token as a bearer token (no cookie). It gets CORS on the few routes it uses and
nowhere else, so a leaked or misconfigured extension id opens nothing more: reading the
user and their characters, redeeming a pairing code, and ending its own token. The
answer never allows credentials, so a browser never sends the session cookie along.
Any other origin, and any other route, gets nothing from this; the generic
``BITBUDDIES_CORS_ORIGINS`` policy (api/app.py) is separate and unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from fastapi import APIRouter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import SettingsDep
from api.schemas import ExtensionPublic

router = APIRouter(tags=["extension"])

# What the extension calls: (method, path pattern). Nothing else is opened to it.
EXTENSION_ROUTES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("GET", re.compile(r"/v1/me")),
    ("GET", re.compile(r"/v1/characters")),
    ("GET", re.compile(r"/v1/characters/[^/]+")),
    ("GET", re.compile(r"/v1/characters/[^/]+/assets/[^/]+")),
    ("POST", re.compile(r"/v1/tokens/pair")),
    ("DELETE", re.compile(r"/v1/tokens/current")),
)
ALLOWED_HEADERS = b"Authorization, Content-Type"
PREFLIGHT_MAX_AGE = b"600"  # seconds a browser may reuse a preflight's answer


@router.get("/v1/extension", response_model=ExtensionPublic)
async def extension(settings: SettingsDep) -> ExtensionPublic:
    """No credentials: the web app reads it before the person has paired anything."""
    return ExtensionPublic(extension_ids=settings.extension_ids)


def extension_origins(extension_ids: Iterable[str]) -> frozenset[bytes]:
    return frozenset(f"chrome-extension://{i}".encode() for i in extension_ids)


class ExtensionCors:
    """CORS for the extension's origins on ``EXTENSION_ROUTES`` only: its preflights are
    answered here (204), and its requests' answers get ``Access-Control-Allow-Origin``.
    Plain ASGI, so an answer passes through untouched but for those headers."""

    def __init__(self, app: ASGIApp, *, origins: frozenset[bytes]) -> None:
        self.app = app
        self.origins = origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.origins:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        origin = headers.get(b"origin")
        if origin not in self.origins:
            await self.app(scope, receive, send)
            return
        allowed = [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
        asked = headers.get(b"access-control-request-method")
        if scope["method"] == "OPTIONS" and asked is not None:
            if not _opened(asked.decode("latin-1"), scope["path"]):
                await self.app(scope, receive, send)  # not for the extension: no CORS
                return
            await send(
                {
                    "type": "http.response.start",
                    "status": 204,
                    "headers": [
                        *allowed,
                        (b"access-control-allow-methods", asked),
                        (b"access-control-allow-headers", ALLOWED_HEADERS),
                        (b"access-control-max-age", PREFLIGHT_MAX_AGE),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        if not _opened(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *allowed]}
            await send(message)

        await self.app(scope, receive, send_with_cors)


def _opened(method: str, path: str) -> bool:
    return any(m == method and p.fullmatch(path) for m, p in EXTENSION_ROUTES)
