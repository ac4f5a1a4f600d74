"""Verifying fal.ai's webhook deliveries, with no web framework.

A receiver hands ``verify`` the request's headers and its raw body (the exact bytes
received, before any JSON parsing: the signature covers them) and gets a
``WebhookDelivery``, or one ``WebhookRejected`` saying why. Answer a rejected delivery
with a 4xx and a ``JwksUnavailable`` (fal's key set could not be fetched) with a 503:
fal retries any delivery not answered with a 2xx (10 times over 2 hours), so a
delivery refused while the keys were unreachable comes again.

fal's rules, from its webhook documentation; each is applied where its comment says:

- Headers: ``X-Fal-Webhook-Request-Id``, ``X-Fal-Webhook-User-Id``,
  ``X-Fal-Webhook-Timestamp`` (unix seconds), ``X-Fal-Webhook-Signature`` (hex of an
  Ed25519 signature).
- The signed message: the UTF-8 bytes of
  ``request_id + "\\n" + user_id + "\\n" + timestamp + "\\n" + sha256_hex(raw_body)``.
- The public keys: a JWKS document at ``JWKS_URL``, ``{"keys": [{"kty": "OKP", "crv":
  "Ed25519", "x": <base64url, no padding>, "kid"?: ...}, ...]}``; it may be cached for up
  to 24 hours. A signature is valid if any key of the set verifies it.
- A delivery whose timestamp is more than 300 s from now must be refused.
- The body: ``{request_id, gateway_request_id, status: "OK" | "ERROR", payload, error?,
  payload_error?}``.

fal's SDK has no verify helper, hence this module. The local model server signs its
deliveries the same way (infra/modelserver/webhooks.py, written separately) and serves
its key set at ``<model server>/.well-known/jwks.json``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

log = logging.getLogger("bitbuddies.falwebhooks")

JWKS_URL: Final = "https://rest.alpha.fal.ai/.well-known/jwks.json"
# fal: the key set may be cached for up to 24 hours.
MAX_KEYS_TTL_SECONDS: Final = 24 * 3600.0
# A signature no cached key verifies may be from a key fal rotated in since: look again,
# but at most this often, so forged deliveries cannot make us hammer fal's key set.
DEFAULT_REFETCH_INTERVAL_SECONDS: Final = 60.0
# fal: refuse a delivery whose timestamp is more than 300 s from now.
DEFAULT_TOLERANCE_SECONDS: Final = 300.0
FETCH_TIMEOUT_SECONDS: Final = 10.0

REQUEST_ID_HEADER: Final = "X-Fal-Webhook-Request-Id"
USER_ID_HEADER: Final = "X-Fal-Webhook-User-Id"
TIMESTAMP_HEADER: Final = "X-Fal-Webhook-Timestamp"
SIGNATURE_HEADER: Final = "X-Fal-Webhook-Signature"
HEADERS: Final = (REQUEST_ID_HEADER, USER_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)

_DIGITS = re.compile(r"[0-9]{1,15}")
_SIGNATURE_HEX = re.compile(r"[0-9a-fA-F]{128}")  # an Ed25519 signature is 64 bytes
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_STATUSES: Final = ("OK", "ERROR")

Status = Literal["OK", "ERROR"]
PublicKeys = tuple[Ed25519PublicKey, ...]


class WebhookRejected(Exception):
    """The delivery is not one fal signed, or not one we accept; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JwksUnavailable(Exception):
    """fal's key set could not be fetched (or had no usable key): nothing can be verified
    now. Not the sender's fault: answer 503 so fal delivers again later."""


@dataclass(frozen=True)
class WebhookDelivery:
    """A delivery that verified: who signed it for which request, when, and its body."""

    request_id: str
    user_id: str
    timestamp: int  # unix seconds, as signed
    status: Status
    body: dict[str, Any]  # the whole parsed body

    @property
    def payload(self) -> Any:
        """The job's result (status OK) or fal's error detail (status ERROR)."""
        return self.body.get("payload")

    @property
    def error(self) -> str | None:
        error = self.body.get("error")
        return error if isinstance(error, str) else None


def _public_keys(document: Any) -> PublicKeys:
    """The Ed25519 keys of a JWKS document; members of another type are skipped."""
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise JwksUnavailable('the key set has no "keys" list')
    found: list[Ed25519PublicKey] = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        if entry.get("kty") != "OKP" or entry.get("crv") != "Ed25519":
            continue
        x = entry.get("x")
        # base64url without padding (RFC 7517); anything else is not a key of this set.
        if not isinstance(x, str) or not _BASE64URL.fullmatch(x):
            continue
        try:
            raw = base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))
            found.append(Ed25519PublicKey.from_public_bytes(raw))
        except (binascii.Error, ValueError):  # not 32 bytes, or not a point
            continue
    if not found:
        raise JwksUnavailable("the key set has no usable Ed25519 key")
    return tuple(found)


class JwksCache:
    """fal's public keys, fetched from ``url`` and kept for ``ttl_seconds`` (at most the
    24 hours fal allows). ``refresh`` fetches again early, for a signature the cached keys
    do not verify (fal may have rotated its key), but never more than once per
    ``refetch_interval_seconds``; a failed fetch counts too, so an unreachable key set is
    not asked on every request either. Safe to share between concurrent verifications:
    one fetch at a time, and a caller that waited for another's fetch uses its keys."""

    def __init__(
        self,
        url: str = JWKS_URL,
        *,
        ttl_seconds: float = MAX_KEYS_TTL_SECONDS,
        refetch_interval_seconds: float = DEFAULT_REFETCH_INTERVAL_SECONDS,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < refetch_interval_seconds <= ttl_seconds <= MAX_KEYS_TTL_SECONDS:
            raise ValueError(
                "need 0 < refetch_interval_seconds <= ttl_seconds <= 24 h (fal's limit)"
            )
        self.url = url
        self.ttl_seconds = ttl_seconds
        self.refetch_interval_seconds = refetch_interval_seconds
        self._client = client
        self._clock = clock
        self._lock = asyncio.Lock()
        self._keys: PublicKeys = ()
        self._fetched_at = 0.0  # clock() of the last fetch that succeeded
        self._tried_at: float | None = None  # clock() of the last fetch, whatever its end
        self.fetches = 0  # fetches tried, for the curious and the tests

    def _fresh(self) -> bool:
        return bool(self._keys) and self._clock() - self._fetched_at < self.ttl_seconds

    def _may_fetch(self) -> bool:
        return (
            self._tried_at is None
            or self._clock() - self._tried_at >= self.refetch_interval_seconds
        )

    async def keys(self) -> PublicKeys:
        """The cached keys, fetched first when there are none or they are older than the
        TTL. Raises ``JwksUnavailable`` when they must be fetched and cannot be."""
        if self._fresh():
            return self._keys
        async with self._lock:
            if self._fresh():  # fetched by another caller meanwhile
                return self._keys
            if not self._may_fetch():
                raise JwksUnavailable(
                    f"no current keys and the last fetch was under"
                    f" {self.refetch_interval_seconds:.0f} s ago"
                )
            return await self._fetch()

    async def refresh(self, tried: PublicKeys) -> PublicKeys | None:
        """Keys to try after ``tried`` failed to verify a signature: those another caller
        fetched since, or newly fetched ones; None when the last fetch is too recent to
        fetch again (the signature stays unverified). Raises ``JwksUnavailable`` when the
        fetch fails."""
        async with self._lock:
            if self._keys is not tried and self._fresh():
                return self._keys
            if not self._may_fetch():
                return None
            return await self._fetch()

    async def _fetch(self) -> PublicKeys:
        """One GET of the key set; the caller holds the lock and checked the interval."""
        started = self._tried_at = self._clock()
        self.fetches += 1
        try:
            if self._client is not None:
                response = await self._client.get(self.url, timeout=FETCH_TIMEOUT_SECONDS)
            else:
                async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_SECONDS) as client:
                    response = await client.get(self.url)
        except httpx.HTTPError as exc:
            log.warning("could not fetch fal's webhook keys from %s: %r", self.url, exc)
            raise JwksUnavailable(f"{self.url}: {type(exc).__name__}: {exc}") from exc
        try:
            if response.status_code != 200:
                raise JwksUnavailable(f"answered {response.status_code}")
            keys = _public_keys(response.json())
        except (ValueError, JwksUnavailable) as exc:  # json's errors are ValueErrors
            log.warning("fal's webhook key set at %s is unusable: %s", self.url, exc)
            raise JwksUnavailable(f"{self.url}: {exc}") from exc
        self._keys, self._fetched_at = keys, started
        return keys


def _header(headers: Mapping[str, str], name: str) -> str:
    """A header by name, whatever its case; a missing or empty one rejects the delivery
    (fal sends all four on every delivery)."""
    wanted = name.lower()
    values = {value for key, value in headers.items() if key.lower() == wanted}
    if not values or values == {""}:
        raise WebhookRejected(f"missing header {name}")
    if len(values) > 1:
        raise WebhookRejected(f"header {name} given more than once")
    return values.pop()


def _verifies(keys: PublicKeys, signature: bytes, message: bytes) -> bool:
    """fal: a signature is valid if any key of the set verifies it."""
    for key in keys:
        try:
            key.verify(signature, message)
        except InvalidSignature:
            continue
        return True
    return False


async def verify(
    headers: Mapping[str, str],
    raw_body: bytes,
    *,
    keys: JwksCache,
    now: float,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
) -> WebhookDelivery:
    """The delivery ``headers`` and ``raw_body`` make, once fal's signature on them is
    verified with ``keys`` and its timestamp is within ``tolerance_seconds`` of ``now``
    (unix seconds); else ``WebhookRejected``. ``JwksUnavailable`` when the key set had
    to be fetched and could not be."""
    request_id = _header(headers, REQUEST_ID_HEADER)
    user_id = _header(headers, USER_ID_HEADER)
    timestamp_text = _header(headers, TIMESTAMP_HEADER)
    signature_hex = _header(headers, SIGNATURE_HEADER)

    # The fields are joined with newlines before signing: one holding a newline could
    # pass for other fields, so none may (fal's ids never do).
    if "\n" in request_id or "\n" in user_id:
        raise WebhookRejected("a header holds a newline")

    # fal's timestamp is whole unix seconds: decimal digits, nothing else (no sign,
    # spaces, fraction or exponent, which int() or float() would accept).
    if not _DIGITS.fullmatch(timestamp_text):
        raise WebhookRejected(f"{TIMESTAMP_HEADER} is not a whole number of seconds")
    timestamp = int(timestamp_text)
    # fal: refuse a delivery more than 300 s (tolerance_seconds) from now, either way, so
    # a captured delivery cannot be replayed later.
    if timestamp < now - tolerance_seconds:
        raise WebhookRejected(f"stale: signed {now - timestamp:.0f} s ago")
    if timestamp > now + tolerance_seconds:
        raise WebhookRejected(f"from the future: signed {timestamp - now:.0f} s ahead")

    # fal sends the signature as hex: an Ed25519 signature is 64 bytes, 128 hex digits.
    if not _SIGNATURE_HEX.fullmatch(signature_hex):
        raise WebhookRejected(f"{SIGNATURE_HEADER} is not the hex of a 64-byte signature")
    signature = bytes.fromhex(signature_hex)

    # fal signs request_id, user_id, timestamp (as sent) and the SHA-256 of the raw body,
    # in that order, joined with newlines, as UTF-8.
    message = "\n".join(
        (request_id, user_id, timestamp_text, hashlib.sha256(raw_body).hexdigest())
    ).encode("utf-8")
    cached = await keys.keys()
    if not _verifies(cached, signature, message):
        # Maybe signed with a key fal rotated in after we cached the set: fetch it again,
        # unless it was fetched too recently (then this signature is simply bad).
        fresh = await keys.refresh(cached)
        if fresh is None or not _verifies(fresh, signature, message):
            raise WebhookRejected("the signature is not valid under any of fal's keys")

    # Only a signed body is parsed.
    try:
        body = json.loads(raw_body)
    except ValueError as exc:  # not UTF-8 (UnicodeDecodeError) or not JSON
        raise WebhookRejected(f"the body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise WebhookRejected("the body is not a JSON object")
    # The header's request id is what was signed; the body must be about the same job.
    if body.get("request_id") != request_id:
        raise WebhookRejected(f"the body's request_id is not the {REQUEST_ID_HEADER} header's")
    status = body.get("status")
    # fal's body: status is "OK" or "ERROR".
    if status not in _STATUSES:
        raise WebhookRejected(f"the body's status is not OK or ERROR: {status!r}")
    return WebhookDelivery(
        request_id=request_id,
        user_id=user_id,
        timestamp=timestamp,
        status="OK" if status == "OK" else "ERROR",
        body=body,
    )
