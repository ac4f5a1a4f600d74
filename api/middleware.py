"""ASGI middleware: request ids, log context and server spans; request-body limits,
security headers, strict UTF-8 form fields.

All of it is plain ASGI (no ``BaseHTTPMiddleware``), so event streams pass through
untouched and nothing buffers a body.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable

import starlette.formparsers
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import NotUtf8, error_body
from infra.logging import bind_log_context, unbind_log_context

log = logging.getLogger("bitbuddies.api")

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


REQUEST_ID_HEADER = b"x-request-id"
# An incoming X-Request-ID is kept only when it is a short token of safe characters
# (a proxy's or a client's id: a UUID, hex, base64url); anything else is replaced.
_SAFE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")
# A caller's W3C trace context is continued; its baggage is not taken (it would travel
# into every workflow and activity header, at the caller's chosen size).
_TRACE_CONTEXT = TraceContextTextMapPropagator()
_TRACE_HEADERS = frozenset({b"traceparent", b"tracestate"})


def request_id_of(headers: list[tuple[bytes, bytes]]) -> str:
    """The request's id: the caller's X-Request-ID when it is a safe token, else a new one."""
    for name, value in headers:
        if name.lower() == REQUEST_ID_HEADER:
            if _SAFE_REQUEST_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return uuid.uuid4().hex


def _route_of(scope: Scope) -> str | None:
    """The matched route's template (``/v1/generations/{generation_id}``), never the path
    itself, which carries ids and share slugs."""
    path = getattr(scope.get("route"), "path_format", None) or getattr(
        scope.get("route"), "path", None
    )
    return path if isinstance(path, str) else None


class RequestContext:
    """What each HTTP request is, for logs and traces; inside SecurityHeaders only.

    - A request id: the caller's ``X-Request-ID`` when it is a safe token, else a new
      one; sent back in ``X-Request-ID``.
    - Log context (infra/logging.py): every line logged while the request is handled
      carries ``request_id``, and ``user_id`` once the caller is known (api/deps.py adds
      it); and ``trace_id`` when tracing is on.
    - A server span (infra/telemetry.py): ``<METHOD> <route template>``, continuing the
      caller's ``traceparent`` (not its baggage); the workflow start it makes joins it.
      Its attributes are the method, the route template, the status, the request id and
      the user id: never the path or the query (ids, share slugs, signatures), nor any
      header. Without an exporter the tracer is the no-op one.

    An event stream's span lasts as long as the stream. An unhandled error is logged
    here, with its traceback and the request's log context, and answered here: a 500
    with the documented error body (``internal_error``), the request id and, since
    SecurityHeaders is outside this one, the security headers. Starlette's own last-resort
    500 (plain text, none of those headers) is never reached; if the answer had already
    begun, the error is re-raised so the server drops the connection.
    """

    def __init__(self, app: ASGIApp, *, tracer: trace.Tracer | None = None) -> None:
        self.app = app
        self.tracer = tracer or trace.get_tracer("bitbuddies.api")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        request_id = request_id_of(headers)
        carrier = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in headers
            if name.lower() in _TRACE_HEADERS
        }
        method: str = scope["method"]
        status: int | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                kept = [
                    (n, v) for n, v in message.get("headers", []) if n.lower() != REQUEST_ID_HEADER
                ]
                message = {**message, "headers": [*kept, (REQUEST_ID_HEADER, request_id.encode())]}
            await send(message)

        fields, token = bind_log_context(inherit=False, request_id=request_id)
        with self.tracer.start_as_current_span(
            method,
            context=_TRACE_CONTEXT.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "request.id": request_id},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                await self.app(scope, receive, send_with_id)
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                log.exception("unhandled error in %s %s", method, _route_of(scope) or "?")
                if status is not None:  # the answer has begun: nothing else can be said
                    raise
                status = 500
                await _send_json(
                    send_with_id,
                    500,
                    error_body("internal_error", "Something went wrong on our side; try again."),
                )
            finally:
                unbind_log_context(token)
                route = _route_of(scope)
                if route is not None:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                if status is not None:
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                if fields.get("user_id"):
                    span.set_attribute("enduser.id", str(fields["user_id"]))
