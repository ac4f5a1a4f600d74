"""The API's rate limits, as dependencies that answer 429 with Retry-After.

Which caller is which: the client address uvicorn reports (behind a proxy, run uvicorn
with ``--proxy-headers --forwarded-allow-ips`` set to the proxy's address so this is the
real client's), the normalised email for login failures, the user id for everything a
signed-in user does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Request
from redis.asyncio import Redis

from api.services.errors import RateLimited
from infra.ratelimit import Concurrency, Decision, FailureBackoff, Quota
from infra.settings import Settings


@dataclass(frozen=True)
class Limits:
    enabled: bool
    signup_per_ip: Quota
    login_per_ip: Quota
    login_failures: FailureBackoff
    starts_per_user: Quota
    mails_per_address: Quota
    checkouts_per_user: Quota
    pairing_per_ip: Quota
    streams_per_user: Concurrency

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            enabled=settings.rate_limits == "on",
            signup_per_ip=Quota("signup-ip", settings.signups_per_ip_per_hour, 3600),
            login_per_ip=Quota("login-ip", settings.logins_per_ip_per_minute, 60),
            login_failures=FailureBackoff("login-fail", settings.login_failures_before_backoff),
            starts_per_user=Quota(
                "starts-user", settings.generation_starts_per_user_per_minute, 60
            ),
            mails_per_address=Quota("mails-address", settings.mails_per_address_per_hour, 3600),
            checkouts_per_user=Quota("checkouts-user", settings.checkouts_per_user_per_hour, 3600),
            pairing_per_ip=Quota("pairing-ip", settings.pairing_attempts_per_ip_per_minute, 60),
            streams_per_user=Concurrency("streams-user", settings.open_streams_per_user),
        )


def limits_of(request: Request) -> tuple[Limits, Redis]:
    return request.app.state.limits, request.app.state.redis


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _refuse(decision: Decision, message: str) -> None:
    if not decision.allowed:
        raise RateLimited(message, retry_after=decision.retry_after_header)


async def _hit(
    request: Request, quota: Callable[[Limits], Quota], identity: str, message: str
) -> None:
    """One more request of ``identity`` on ``quota``; RateLimited with ``message`` past it."""
    limits, redis = limits_of(request)
    if limits.enabled:
        _refuse(await quota(limits).hit(redis, identity), message)


async def signup_allowed(request: Request) -> None:
    await _hit(
        request,
        lambda limits: limits.signup_per_ip,
        client_address(request),
        "Too many sign-ups from your address; try again later.",
    )


async def login_allowed(request: Request, email: str) -> None:
    limits, redis = limits_of(request)
    if not limits.enabled:
        return
    _refuse(
        await limits.login_per_ip.hit(redis, client_address(request)),
        "Too many log-ins from your address; try again in a minute.",
    )
    _refuse(
        await limits.login_failures.check(redis, email),
        "Too many wrong passwords for this account; wait before trying again.",
    )


async def login_result(request: Request, email: str, *, ok: bool) -> None:
    limits, redis = limits_of(request)
    if limits.enabled:
        backoff = limits.login_failures
        await (backoff.succeeded(redis, email) if ok else backoff.failed(redis, email))


async def start_allowed(request: Request, user_id: str) -> None:
    await _hit(
        request,
        lambda limits: limits.starts_per_user,
        user_id,
        "You are starting BitBuddies faster than we can make them; try again shortly.",
    )


async def mail_allowed(request: Request, email: str) -> None:
    """Before a verification or reset mail to ``email`` (normalised) is sent."""
    await _hit(
        request,
        lambda limits: limits.mails_per_address,
        email,
        "Too many emails to this address; wait an hour, or look in your spam folder.",
    )


async def checkout_allowed(request: Request, user_id: str) -> None:
    """Before a Checkout Session is opened for the user."""
    await _hit(
        request,
        lambda limits: limits.checkouts_per_user,
        user_id,
        "Too many checkouts opened; finish one you started, or try again in an hour.",
    )


async def pairing_allowed(request: Request) -> None:
    """Before a pairing code is redeemed, whether it turns out right or wrong: every try
    counts, so nobody can guess their way through the live codes."""
    await _hit(
        request,
        lambda limits: limits.pairing_per_ip,
        client_address(request),
        "Too many pairing attempts from your address; try again in a minute.",
    )
