"""Errors as HTTP. The services refuse with domain errors (api/services/errors.py);
``STATUS_OF`` gives each its status and a stable machine-readable code.

Every answer that is not a success has the same body, whoever produced it (our
handlers, FastAPI's validation, Starlette's routing, the body-size guard, an unexpected
exception): ``{"error": {"code", "message"[, "details"]}}``.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.services import errors
from api.services.errors import DomainError

log = logging.getLogger("bitbuddies.api")


# Each refusal of a rule, as HTTP: its status and its stable code. The one place a domain
# error meets HTTP; a subclass answers as its nearest listed ancestor.
STATUS_OF: dict[type[DomainError], tuple[int, str]] = {
    errors.NotSignedIn: (401, "unauthorized"),
    errors.NoTokens: (402, "insufficient_tokens"),
    errors.TokensOwed: (402, "tokens_owed"),
    errors.CsrfRefused: (403, "csrf_failed"),
    errors.NotAllowed: (403, "forbidden"),
    errors.NotFound: (404, "not_found"),
    errors.EmailTaken: (409, "conflict"),
    errors.AlreadyEnded: (409, "already_ended"),
    errors.PhotoTooLarge: (413, "payload_too_large"),
    errors.PhotoUnsupported: (415, "unsupported_media_type"),
    errors.InvalidInput: (422, "invalid_request"),
    errors.KeyReused: (422, "idempotency_key_reused"),
    errors.WrongPassword: (401, "unauthorized"),
    errors.RateLimited: (429, "rate_limited"),
    errors.Busy: (503, "unavailable"),
    errors.CouldNotStart: (503, "unavailable"),
    errors.InvalidToken: (400, "invalid_token"),
    errors.WebhookRefused: (400, "webhook_rejected"),
}


_BY_TYPE: dict[type, tuple[int, str]] = dict(STATUS_OF)


def status_of(err: DomainError) -> tuple[int, str]:
    for kind in type(err).__mro__:
        if (answer := _BY_TYPE.get(kind)) is not None:
            return answer
    return 400, "bad_request"


# Codes for statuses that Starlette or the server raise without a business error.
_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    431: "headers_too_large",
}


class NotUtf8(ValueError):
    """A multipart text field whose bytes are not UTF-8 (see ``api/middleware.py``)."""


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return {"error": error}


def error_response(
    status: int, code: str, message: str, *, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def _message(err: dict[str, Any]) -> str:
    # Our validators raise ValueError with a sentence for the user; pydantic prefixes it.
    return str(err["msg"]).removeprefix("Value error, ")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _refused(_: Request, exc: DomainError) -> JSONResponse:
        status, code = status_of(exc)
        headers: dict[str, str] = {}
        if status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        if exc.retry_after is not None:
            headers["Retry-After"] = str(exc.retry_after)
        return JSONResponse(
            error_body(code, exc.message, exc.details), status_code=status, headers=headers or None
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"field": ".".join(str(p) for p in err["loc"][1:]), "message": _message(err)}
            for err in exc.errors()
        ]
        summary = "; ".join(
            f"{p['field']}: {p['message']}" if p["field"] else p["message"] for p in problems
        )
        return JSONResponse(
            error_body("invalid_request", summary or "invalid request", problems), status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, NotUtf8):
            return error_response(422, "invalid_request", str(exc.__cause__))
        status = exc.status_code
        message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(status).phrase
        if status == 404 and exc.detail == "Not Found":
            message = "There is nothing at this address."
        return error_response(
            status, _CODES.get(status, "error"), message, headers=dict(exc.headers or {})
        )

    @app.exception_handler(psycopg.OperationalError)
    async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        # PostgreSQL out of reach, a connection lost mid-request, or the pool exhausted
        # (PoolTimeout is one). A transaction cut off is rolled back, or, if the cut came
        # during its COMMIT, may have landed: either way trying again is right, and a
        # retry with the same Idempotency-Key finds whatever did land.
        log.warning(
            "database unavailable on %s %s: %s",
            request.method,
            request.url.path,
            type(exc).__name__,
        )
        return error_response(
            503,
            "unavailable",
            "The service is briefly unavailable; try again.",
            headers={"Retry-After": "1"},
        )

    # An unhandled error's 500 (`internal_error`) is answered by api/middleware.py
    # RequestContext, where the request id and log context are.


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable, machine-readable: e.g. not_found, rate_limited")
    message: str = Field(description="A sentence for the person using the app")
    details: Any = None


class ErrorBody(BaseModel):
    error: ErrorDetail


_DESCRIPTIONS = {
    400: "Bad request",
    401: "No token, or an unknown or expired one",
    402: "No tokens left",
    403: "A device token may not do this; or a browser session's request without its CSRF"
    " token, or from another site",
    404: "No such thing, or not yours",
    409: "Conflict",
    413: "Body larger than the limit",
    415: "Unsupported media type",
    422: "Invalid input",
    429: "Rate limited; see Retry-After",
    503: "A dependency is unavailable; retry",
}


def documented(*statuses: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for a route's error statuses, each with the error body.
    ``descriptions`` overrides a default, keyed ``s404="..."``."""
    return {
        status: {
            "model": ErrorBody,
            "description": descriptions.get(f"s{status}", _DESCRIPTIONS.get(status, "Error")),
        }
        for status in statuses
    }
