"""infra/falwebhooks.py: fal's webhook signatures verified, and refused, rule by rule.

No stack: deliveries are signed here, by hand, exactly as fal's documentation says (not
with any code of ours), with fresh Ed25519 keys whose key set a tiny local HTTP server
serves and counts the fetches of. The cache's clock is a fake one, so TTLs and refetch
intervals pass without waiting.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from infra.falwebhooks import (
    HEADERS,
    JwksCache,
    JwksUnavailable,
    WebhookRejected,
    verify,
)

NOW = 1_750_000_000  # the receiver's "now", unix seconds
REQUEST_ID = "764cabcf-b745-4b3e-ae38-1200304cf45b"
USER_ID = "github|4242"
INTERVAL = 60.0  # the caches' refetch interval here


def jwk(key: Ed25519PrivateKey, kid: str) -> dict[str, str]:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid}


def body_of(request_id: str = REQUEST_ID, status: str = "OK", **extra: Any) -> bytes:
    body = {
        "request_id": request_id,
        "gateway_request_id": request_id,
        "status": status,
        "payload": {"images": [{"url": "https://v3.fal.media/files/x.png"}]},
        **extra,
    }
    return json.dumps(body).encode()


def signed(
    key: Ed25519PrivateKey,
    raw_body: bytes,
    *,
    timestamp: int = NOW,
    request_id: str = REQUEST_ID,
    user_id: str = USER_ID,
) -> dict[str, str]:
    """fal's headers for ``raw_body``: the signature is over request id, user id,
    timestamp and the body's SHA-256 hex, joined by newlines, as UTF-8."""
    message = f"{request_id}\n{user_id}\n{timestamp}\n{hashlib.sha256(raw_body).hexdigest()}"
    return {
        "X-Fal-Webhook-Request-Id": request_id,
        "X-Fal-Webhook-User-Id": user_id,
        "X-Fal-Webhook-Timestamp": str(timestamp),
        "X-Fal-Webhook-Signature": key.sign(message.encode("utf-8")).hex(),
    }


class KeyHost:
    """Serves ``document`` at ``url`` (answering ``status``) and counts the GETs."""

    def __init__(self) -> None:
        self.document: Any = {"keys": []}
        self.status = 200
        self.gets = 0
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host.gets += 1
                data = (
                    host.document
                    if isinstance(host.document, bytes)
                    else json.dumps(host.document).encode()
                )
                self.send_response(host.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/.well-known/jwks.json"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def serve(self, *keys: dict[str, str]) -> None:
        self.document = {"keys": list(keys)}

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def host() -> Iterator[KeyHost]:
    served = KeyHost()
    try:
        yield served
    finally:
        served.close()


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(host: KeyHost, key: Ed25519PrivateKey, clock: Clock) -> JwksCache:
    host.serve(jwk(key, "k1"))
    return JwksCache(host.url, ttl_seconds=3600, refetch_interval_seconds=INTERVAL, clock=clock)


async def rejected(headers: dict[str, str], raw: bytes, cache: JwksCache, now: float = NOW) -> str:
    with pytest.raises(WebhookRejected) as err:
        await verify(headers, raw, keys=cache, now=now)
    return err.value.reason


async def test_a_delivery_signed_as_fal_signs_verifies(
    cache: JwksCache, key: Ed25519PrivateKey, host: KeyHost
) -> None:
    raw = body_of()
    delivery = await verify(httpx.Headers(signed(key, raw)), raw, keys=cache, now=NOW)
    assert (delivery.request_id, delivery.user_id, delivery.timestamp) == (
        REQUEST_ID,
        USER_ID,
        NOW,
    )
    assert delivery.status == "OK"
    assert delivery.body == json.loads(raw)
    assert delivery.payload == {"images": [{"url": "https://v3.fal.media/files/x.png"}]}
    assert delivery.error is None

    failed = body_of(status="ERROR", error="Out of memory", payload={"detail": "oom"})
    lower = {name.lower(): value for name, value in signed(key, failed).items()}
    delivery = await verify(lower, failed, keys=cache, now=NOW)  # header names in any case
    assert (delivery.status, delivery.error, delivery.payload) == (
        "ERROR",
        "Out of memory",
        {"detail": "oom"},
    )
    assert host.gets == 1


async def test_a_tampered_body_is_refused(cache: JwksCache, key: Ed25519PrivateKey) -> None:
    raw = body_of()
    headers = signed(key, raw)
    tampered = raw.replace(b"x.png", b"y.png")
    assert "signature" in await rejected(headers, tampered, cache)
    assert "signature" in await rejected(headers, raw + b" ", cache)  # one byte more
    await verify(headers, raw, keys=cache, now=NOW)  # the untouched one still verifies


async def test_a_signature_by_a_key_not_in_the_set_is_refused_even_after_a_refetch(
    cache: JwksCache, host: KeyHost, clock: Clock
) -> None:
    raw = body_of()
    stranger = Ed25519PrivateKey.generate()
    assert "signature" in await rejected(signed(stranger, raw), raw, cache)
    clock.now += INTERVAL  # a refetch is allowed now: it finds the same set
    assert "signature" in await rejected(signed(stranger, raw), raw, cache)
    assert host.gets == 2


@pytest.mark.parametrize("signed_field", ["request_id", "user_id", "timestamp"])
async def test_every_signed_header_is_covered_by_the_signature(
    cache: JwksCache, key: Ed25519PrivateKey, signed_field: str
) -> None:
    raw = body_of()
    headers = signed(key, raw)
    other = {
        "request_id": ("X-Fal-Webhook-Request-Id", "another-request"),
        "user_id": ("X-Fal-Webhook-User-Id", "someone-else"),
        "timestamp": ("X-Fal-Webhook-Timestamp", str(NOW - 1)),
    }
    name, value = other[signed_field]
    headers[name] = value
    reason = await rejected(headers, raw, cache)
    assert "signature" in reason


async def test_a_timestamp_more_than_300_seconds_off_is_refused(
    cache: JwksCache, key: Ed25519PrivateKey
) -> None:
    raw = body_of()
    reason = await rejected(signed(key, raw, timestamp=NOW - 301), raw, cache)
    assert reason.startswith("stale")
    reason = await rejected(signed(key, raw, timestamp=NOW + 301), raw, cache)
    assert reason.startswith("from the future")
    for edge in (NOW - 300, NOW + 300):  # exactly 300 s off is still within
        delivery = await verify(signed(key, raw, timestamp=edge), raw, keys=cache, now=NOW)
        assert delivery.timestamp == edge
    # The tolerance is the caller's to set.
    headers = signed(key, raw, timestamp=NOW - 30)
    with pytest.raises(WebhookRejected, match="stale"):
        await verify(headers, raw, keys=cache, now=NOW, tolerance_seconds=10)


@pytest.mark.parametrize("timestamp", ["1750000000.5", "abc", "-5", " 1750000000", "1e9", "+17"])
async def test_a_timestamp_that_is_not_whole_seconds_is_refused(
    cache: JwksCache, key: Ed25519PrivateKey, timestamp: str
) -> None:
    raw = body_of()
    headers = signed(key, raw)
    headers["X-Fal-Webhook-Timestamp"] = timestamp
    assert "whole number" in await rejected(headers, raw, cache)


@pytest.mark.parametrize("header", HEADERS)
async def test_a_missing_header_is_refused(
    cache: JwksCache, key: Ed25519PrivateKey, header: str
) -> None:
    raw = body_of()
    headers = signed(key, raw)
    del headers[header]
    assert await rejected(headers, raw, cache) == f"missing header {header}"
    headers[header] = ""
    assert await rejected(headers, raw, cache) == f"missing header {header}"


async def test_a_signature_that_is_not_hex_of_64_bytes_is_refused(
    cache: JwksCache, key: Ed25519PrivateKey
) -> None:
    raw = body_of()
    good = signed(key, raw)["X-Fal-Webhook-Signature"]
    for bad in ("zz" + good[2:], good[:-2], good + "00", good[:64] + " " + good[64:], ""):
        headers = signed(key, raw)
        headers["X-Fal-Webhook-Signature"] = bad
        reason = await rejected(headers, raw, cache)
        assert "hex" in reason or reason.startswith("missing header"), (bad, reason)
    headers = signed(key, raw)
    headers["X-Fal-Webhook-Signature"] = good.upper()  # hex in either case is hex
    await verify(headers, raw, keys=cache, now=NOW)


async def test_a_signed_body_that_is_not_a_json_object_is_refused(
    cache: JwksCache, key: Ed25519PrivateKey
) -> None:
    for raw in (b"request_id=1", b"\xff\xfe", b""):
        assert "not JSON" in await rejected(signed(key, raw), raw, cache)
    raw = json.dumps([REQUEST_ID]).encode()
    assert "not a JSON object" in await rejected(signed(key, raw), raw, cache)


async def test_a_body_about_another_request_is_refused(
    cache: JwksCache, key: Ed25519PrivateKey
) -> None:
    raw = body_of(request_id="someone-elses-request")
    assert "request_id" in await rejected(signed(key, raw), raw, cache)  # header: REQUEST_ID
    raw = json.dumps({"status": "OK", "payload": {}}).encode()  # no request_id at all
    assert "request_id" in await rejected(signed(key, raw), raw, cache)


async def test_a_status_other_than_ok_or_error_is_refused(
    cache: JwksCache, key: Ed25519PrivateKey
) -> None:
    raw = body_of(status="COMPLETED")
    assert "status" in await rejected(signed(key, raw), raw, cache)


async def test_a_rotated_key_is_picked_up_by_a_refetch_at_most_once_per_interval(
    cache: JwksCache, key: Ed25519PrivateKey, host: KeyHost, clock: Clock
) -> None:
    raw = body_of()
    await verify(signed(key, raw), raw, keys=cache, now=NOW)
    assert host.gets == 1
    rotated = Ed25519PrivateKey.generate()
    host.serve(jwk(rotated, "k2"))  # fal rotated its key: the old one is gone

    clock.now += 10  # the last fetch was 10 s ago: not fetched again yet
    assert "signature" in await rejected(signed(rotated, raw), raw, cache)
    assert host.gets == 1
    clock.now += INTERVAL
    delivery = await verify(signed(rotated, raw), raw, keys=cache, now=NOW)  # refetched
    assert delivery.request_id == REQUEST_ID
    assert host.gets == 2
    for _ in range(5):  # the new key is cached now
        await verify(signed(rotated, raw), raw, keys=cache, now=NOW)
    assert host.gets == 2
    # The retired key verifies nothing any more (and asks for nothing within the interval).
    assert "signature" in await rejected(signed(key, raw), raw, cache)
    assert host.gets == 2


async def test_any_key_of_the_set_verifies_and_other_key_types_are_skipped(
    host: KeyHost, key: Ed25519PrivateKey, clock: Clock
) -> None:
    newer = Ed25519PrivateKey.generate()
    host.serve(
        {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "rsa"},
        {"kty": "OKP", "crv": "X25519", "x": jwk(key, "")["x"]},  # not a signing key
        {"kty": "OKP", "crv": "Ed25519", "x": "not+base64url"},
        jwk(key, "old"),
        jwk(newer, "new"),
    )
    cache = JwksCache(host.url, refetch_interval_seconds=INTERVAL, clock=clock)
    raw = body_of()
    await verify(signed(key, raw), raw, keys=cache, now=NOW)
    await verify(signed(newer, raw), raw, keys=cache, now=NOW)
    assert host.gets == 1


async def test_the_cache_does_not_fetch_per_request(
    cache: JwksCache, key: Ed25519PrivateKey, host: KeyHost, clock: Clock
) -> None:
    raw = body_of()
    # Concurrent first deliveries share one fetch.
    await asyncio.gather(*(verify(signed(key, raw), raw, keys=cache, now=NOW) for _ in range(10)))
    for _ in range(20):
        await verify(signed(key, raw), raw, keys=cache, now=NOW)
        clock.now += 30
    assert host.gets == 1 and cache.fetches == 1  # 600 s of deliveries, one fetch
    forger = Ed25519PrivateKey.generate()
    for _ in range(20):  # a flood of forgeries: at most one refetch per interval
        await rejected(signed(forger, raw), raw, cache)
        clock.now += 1
    assert host.gets == 2


async def test_the_keys_are_fetched_again_once_their_ttl_has_passed(
    cache: JwksCache, key: Ed25519PrivateKey, host: KeyHost, clock: Clock
) -> None:
    raw = body_of()
    await verify(signed(key, raw), raw, keys=cache, now=NOW)
    clock.now += 3599
    await verify(signed(key, raw), raw, keys=cache, now=NOW)
    assert host.gets == 1
    clock.now += 1  # 3600 s: the TTL
    await verify(signed(key, raw), raw, keys=cache, now=NOW)
    assert host.gets == 2


async def test_an_unreachable_or_unusable_key_set_is_unavailable_not_a_rejection(
    host: KeyHost, key: Ed25519PrivateKey, clock: Clock
) -> None:
    raw = body_of()
    headers = signed(key, raw)
    cache = JwksCache(host.url, refetch_interval_seconds=INTERVAL, clock=clock)
    host.status = 503
    with pytest.raises(JwksUnavailable, match="503"):
        await verify(headers, raw, keys=cache, now=NOW)
    with pytest.raises(JwksUnavailable):  # not asked again within the interval
        await verify(headers, raw, keys=cache, now=NOW)
    assert host.gets == 1
    for document in (b"<html>", {"keys": "none"}, {"keys": [{"kty": "RSA"}]}):
        host.status, host.document = 200, document
        clock.now += INTERVAL
        with pytest.raises(JwksUnavailable):
            await verify(headers, raw, keys=cache, now=NOW)
    host.serve(jwk(key, "k1"))
    clock.now += INTERVAL
    assert (await verify(headers, raw, keys=cache, now=NOW)).request_id == REQUEST_ID

    nobody = JwksCache("http://127.0.0.1:9/jwks.json", refetch_interval_seconds=INTERVAL)
    with pytest.raises(JwksUnavailable, match="ConnectError"):
        await verify(headers, raw, keys=nobody, now=NOW)


def test_keys_are_not_cached_longer_than_fal_allows() -> None:
    with pytest.raises(ValueError, match="24 h"):
        JwksCache(ttl_seconds=24 * 3600 + 1)
    with pytest.raises(ValueError):
        JwksCache(ttl_seconds=30, refetch_interval_seconds=60)
    JwksCache(ttl_seconds=24 * 3600)
