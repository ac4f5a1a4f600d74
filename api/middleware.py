"""ASGI middleware: request-body limits, security headers, strict UTF-8 form fields.

All of it is plain ASGI (no ``BaseHTTPMiddleware``), so event streams pass through
untouched and nothing buffers a body.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import starlette.formparsers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import NotUtf8, error_body

# Multipart framing around the photo and the prompt: boundaries, part headers, the
# prompt itself (500 characters, at most 4 bytes each) and slack.
MULTIPART_OVERHEAD = 64 * 1024


def _strict_decode(src: bytes | bytearray, codec: str) -> str:
    """Starlette decodes multipart text fields with the part's charset and falls back to
    Latin-1 when that fails, which would store mojibake; refuse the request instead."""
    try:
        return src.decode(codec)
    except (UnicodeDecodeError, LookupError) as err:
        raise NotUtf8("Text fields must be UTF-8.") from err


# starlette==1.x: the one function its multipart parser decodes names and values with.
starlette.formparsers._user_safe_decode = _strict_decode  # type: ignore[attr-defined]


def _json_413(limit: int) -> bytes:
    message = f"The request body is larger than {limit // 1024} KiB."
    if limit >= 1024 * 1024:
        message = f"The request body is larger than {limit // (1024 * 1024)} MB."
    return json.dumps(error_body("payload_too_large", message)).encode()


class BodyLimit:
    """Refuse a body over its route's limit: at once when Content-Length says so (before
    routing, authentication or reading a byte), else as soon as the bytes read pass it.

    ``limit_for(method, path)`` gives the limit; the photo upload has its own, every
    other route takes a small JSON body or none.
    """

    def __init__(self, app: ASGIApp, *, limit_for: Callable[[str, str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _send_json(send, 400, error_body("bad_request", "Bad Content-Length."))
                return
            if int(declared) > limit:
                await _send_json(send, 413, json.loads(_json_413(limit)), close=True)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # FastAPI re-raises an HTTPException met while reading the body.
                    raise HTTPException(413, json.loads(_json_413(limit))["error"]["message"])
            return message

        await self.app(scope, limited_receive, send)


async def _send_json(send: Send, status: int, body: object, *, close: bool = False) -> None:
    payload = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    if close:  # the client may still be sending; don't read it
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class SecurityHeaders:
    """Headers every answer carries: no MIME sniffing, no framing, no referrer leaks."""

    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self.headers = list(SECURITY_HEADERS)
        if hsts:
            self.headers.append((b"strict-transport-security", b"max-age=31536000"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in self.headers if n not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


class HostGuard:
    """Two checks on where a request arrived.

    - ``allowed_hosts`` (production): a Host header naming anything else is refused, so
      nothing that reads the host can be steered by a forged one.
    - ``placeholder_secret``: while the signing secret is the published placeholder,
      anyone could forge a permanent link to any stored file; so the API then refuses
      every request that reaches it on a non-loopback address (the listening socket's,
      ``scope["server"]``), whatever the environment says.
    """

    def __init__(
        self, app: ASGIApp, *, allowed_hosts: frozenset[str] | None, placeholder_secret: bool
    ) -> None:
        self.app = app
        self.allowed_hosts = allowed_hosts
        self.placeholder_secret = placeholder_secret

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            server = scope.get("server")
            if self.placeholder_secret and server and server[0] not in _LOOPBACK:
                await _send_json(
                    send,
                    503,
                    error_body(
                        "misconfigured",
                        "This server has no signing secret; set BITBUDDIES_SIGNING_SECRET.",
                    ),
                )
                return
            if self.allowed_hosts is not None:
                host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
                name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
                if name.lower() not in self.allowed_hosts:
                    await _send_json(send, 400, error_body("bad_host", "Unknown host."))
                    return
        await self.app(scope, receive, send)
