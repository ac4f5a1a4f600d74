"""Links to finished characters' assets: the one place that decides what URL a browser gets.

Without a CDN, an asset's link is the storage's own short-lived signed URL (a V4 signed
GCS URL, or the API's signed file route locally). With a CDN in front of the bucket (Cloud
CDN on an HTTPS load balancer whose backend bucket is ours), assets under ``characters/``
are linked as ``<cdn>/<key>`` instead, so browsers fetch them from the edge cache:

- with a Cloud CDN signing key, the link is a Cloud CDN signed URL (``Expires``,
  ``KeyName``, ``Signature`` query parameters: HMAC-SHA1, keyed with the 16-byte key, over
  the URL up to and including ``KeyName``; the signature is URL-safe base64, padded, as
  Google's own sample writes it). The bucket can then stay private: the operator grants
  the CDN's fill service account read access to it. Cloud CDN leaves these parameters out
  of its cache key, so every link to one object shares one cached copy;
- without one, the link is plain: the operator has made the objects readable through
  the CDN (a public bucket or prefix). Anyone holding such a link can fetch the asset for
  as long as it exists.

Everything else, notably the working files sent to model providers, always gets the
storage's own short-lived signed URL: they must never sit in a CDN's cache.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from infra.storage.base import Storage
from infra.storage.keys import CHARACTERS
from infra.storage.local import validate_key

if TYPE_CHECKING:
    from infra.settings import Settings

CDN_KEY_BYTES = 16  # Cloud CDN signing keys are 128-bit


def parse_signing_key(value: str) -> tuple[str, bytes]:
    """``<key name>:<key>``, the key as Cloud CDN shows it (URL-safe base64 of 16 bytes),
    into the name and the raw key; ValueError when it is not that."""
    name, sep, encoded = value.partition(":")
    if not sep or not name or not encoded:
        raise ValueError("a Cloud CDN signing key is '<key name>:<base64 key>'")
    try:
        key = base64.urlsafe_b64decode(encoded.strip() + "=" * (-len(encoded.strip()) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("the Cloud CDN signing key is not URL-safe base64") from exc
    if len(key) != CDN_KEY_BYTES:
        raise ValueError(f"a Cloud CDN signing key is {CDN_KEY_BYTES} bytes, not {len(key)}")
    return name, key


def sign_cdn_url(url: str, *, key_name: str, key: bytes, expires: int) -> str:
    """A Cloud CDN signed URL for ``url``, valid until the Unix time ``expires``."""
    separator = "&" if "?" in url else "?"
    to_sign = f"{url}{separator}Expires={expires}&KeyName={key_name}"
    digest = hmac.new(key, to_sign.encode(), hashlib.sha1).digest()
    return f"{to_sign}&Signature={base64.urlsafe_b64encode(digest).decode()}"


@dataclass(frozen=True)
class CDN:
    base_url: str  # without a trailing slash
    key_name: str | None = None
    key: bytes | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> CDN | None:
        if not settings.gcs_cdn_url:
            return None
        base = settings.gcs_cdn_url.rstrip("/")
        if settings.gcs_cdn_signing_key is None:
            return cls(base)
        name, key = parse_signing_key(settings.gcs_cdn_signing_key.get_secret_value())
        return cls(base, name, key)

    def url(self, key: str, *, expires_in: timedelta, now: float) -> str:
        """``<cdn>/<key>``, signed when there is a signing key.

        A signed link's expiry is rounded up to a whole multiple of ``expires_in``, so it is
        valid for between one and two periods and every request within one period gets
        the same link: the browser's cache keeps serving it instead of refetching.
        """
        plain = f"{self.base_url}/{validate_key(key)}"
        if self.key_name is None or self.key is None:
            return plain
        period = max(1, math.ceil(expires_in.total_seconds()))
        expires = (int(now) // period + 2) * period
        return sign_cdn_url(plain, key_name=self.key_name, key=self.key, expires=expires)


def asset_url(
    settings: Settings,
    storage: Storage,
    key: str,
    *,
    expires_in: timedelta,
    content_type: str,
) -> str:
    """The link a browser gets to a finished character's file (``key``).

    Through the CDN when one is configured and the key is a character's asset; otherwise
    the storage's signed URL, valid for ``expires_in``.
    """
    cdn = CDN.from_settings(settings)
    if cdn is not None and key.startswith(CHARACTERS):
        return cdn.url(key, expires_in=expires_in, now=time.time())
    return storage.signed_url(key, expires_in=expires_in, content_type=content_type)
