"""Webhook deliveries as fal makes them: signed with an Ed25519 key, retried with backoff.

The server's key is made the first time it starts and kept in its data folder
(``KEY_FILE``, readable by its owner only), so a restarted server signs with the same key
and a receiver's cached key set stays good. Its public half is served at
``GET /.well-known/jwks.json`` in fal's shape. Nothing here ever logs the private key;
the log names the key by its ``kid``.

What fal does, and so what this does (fal's webhook documentation):

- Each delivery carries ``X-Fal-Webhook-Request-Id``, ``X-Fal-Webhook-User-Id``,
  ``X-Fal-Webhook-Timestamp`` (unix seconds) and ``X-Fal-Webhook-Signature``: the hex of
  an Ed25519 signature of the UTF-8 bytes of
  ``request_id + "\\n" + user_id + "\\n" + timestamp + "\\n" + sha256_hex(raw_body)``.
- The public keys are a JWKS document, ``{"keys": [{"kty": "OKP", "crv": "Ed25519",
  "x": <base64url, no padding>, "kid": ...}]}``.
- fal retries a delivery the receiver did not answer with a 2xx (10 times over 2 hours);
  this stand-in tries ``ATTEMPTS`` times over a few seconds, so a test sees it end.

Our verification of these (infra/falwebhooks.py) is written separately from this
signer, so the model server's tests check one against the other.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

logger = logging.getLogger("infra.modelserver")

KEY_FILE = "webhook_ed25519.pem"
# The user id fal puts in X-Fal-Webhook-User-Id is the account's; locally there is one.
USER_ID = "local"

ATTEMPTS = 4
TIMEOUT = httpx.Timeout(10.0)
BACKOFF_SECONDS = 0.5  # before the 2nd try; doubled before each next one

# (attempt number from 1, the receiver's status code or None, the error or None)
AttemptObserver = Callable[[int, int | None, str | None], None]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class WebhookSigner:
    """One Ed25519 key: its JWKS entry, and the signed headers of a delivery."""

    def __init__(self, private_key: Ed25519PrivateKey, user_id: str = USER_ID) -> None:
        self._key = private_key
        self.user_id = user_id
        raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._x = _b64url(raw)
        # The JWK thumbprint (RFC 7638): SHA-256 of the required members, sorted, no spaces.
        canonical = json.dumps(
            {"crv": "Ed25519", "kty": "OKP", "x": self._x}, separators=(",", ":"), sort_keys=True
        )
        self.kid = _b64url(hashlib.sha256(canonical.encode()).digest())

    @classmethod
    def load_or_create(cls, path: Path) -> WebhookSigner:
        """The key kept at ``path``, made (and written, owner-only) if there is none.

        A file that is there but is not an Ed25519 private key stops the server rather
        than being replaced: a new key would silently fail every receiver's cached keys.
        """
        if path.exists():
            loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(loaded, Ed25519PrivateKey):
                raise ValueError(f"{path} is not an Ed25519 private key; delete it to make one")
            signer = cls(loaded)
            logger.info("webhook signing key kid=%s loaded from %s", signer.kid, path)
            return signer
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written whole under another name, then renamed: a crash never leaves half a key.
        partial = path.with_name(path.name + ".partial")
        partial.unlink(missing_ok=True)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
        signer = cls(key)
        logger.info("webhook signing key kid=%s created at %s", signer.kid, path)
        return signer

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The key set in fal's shape (``GET /.well-known/jwks.json``)."""
        return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": self._x, "kid": self.kid}]}

    def headers(self, request_id: str, raw_body: bytes, timestamp: int) -> dict[str, str]:
        """fal's four webhook headers for ``raw_body``, the exact bytes sent."""
        message = "\n".join(
            (request_id, self.user_id, str(timestamp), hashlib.sha256(raw_body).hexdigest())
        ).encode("utf-8")
        return {
            "X-Fal-Webhook-Request-Id": request_id,
            "X-Fal-Webhook-User-Id": self.user_id,
            "X-Fal-Webhook-Timestamp": str(timestamp),
            "X-Fal-Webhook-Signature": self._key.sign(message).hex(),
        }


def encode_body(body: dict[str, Any]) -> bytes:
    """The delivery's bytes: serialised once, because the signature covers exactly them."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")


def deliver(
    url: str,
    request_id: str,
    raw_body: bytes,
    signer: WebhookSigner,
    observe: AttemptObserver,
    *,
    attempts: int = ATTEMPTS,
    backoff_seconds: float = BACKOFF_SECONDS,
    client: httpx.Client | None = None,
) -> bool:
    """POST one delivery until a 2xx answer or ``attempts`` tries; True if answered 2xx.

    Each try is signed afresh with the time it is sent: receivers refuse a timestamp more
    than 300 s off (as fal's documentation tells them to), and fal's own retries run for
    hours. ``observe`` hears every try's outcome. ``client``, when given, is reused: a new
    client per delivery (what ``httpx.post`` makes) costs a connection and an SSL context,
    tens of milliseconds of CPU each."""
    problem = ""
    for attempt in range(1, attempts + 1):
        headers = {
            "Content-Type": "application/json",
            **signer.headers(request_id, raw_body, int(time.time())),
        }
        try:
            post = client.post if client is not None else httpx.post
            response = post(url, content=raw_body, headers=headers, timeout=TIMEOUT)
        except httpx.HTTPError as exc:
            problem = f"{type(exc).__name__}: {exc}"
            observe(attempt, None, problem)
        else:
            observe(attempt, response.status_code, None)
            if 200 <= response.status_code < 300:
                return True
            problem = f"status {response.status_code}"
        if attempt < attempts:
            time.sleep(backoff_seconds * 2 ** (attempt - 1))
    logger.warning(
        "webhook for request_id=%s gave up after %d tries: %s", request_id, attempts, problem
    )
    return False
