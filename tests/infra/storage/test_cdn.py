"""Finished characters' assets are linked through the CDN when one is configured; every
other file keeps the storage's own short-lived signed URL."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from api.app import create_app
from infra.database import records
from infra.settings import Settings
from infra.storage import keys, storage_from_settings
from infra.storage.cdn import asset_url, sign_cdn_url
from infra.storage.gcs import GCSStorage
from tests.conftest import insert_generation
from tests.support.client import signup

CDN = "https://cdn.bitbuddies.example"
# 16 random bytes, URL-safe base64, as Cloud CDN shows a signing key
KEY = base64.urlsafe_b64encode(bytes(range(16))).decode()
SIGNING_KEY = f"assets-key:{KEY}"


def test_cdn_signatures_match_googles_published_examples() -> None:
    """The three URLs Google's Cloud CDN sample signs in its own test, byte for byte."""
    key = base64.urlsafe_b64decode("nZtRohdNF9m3cKM24IcK4w==")
    expected = {
        "http://35.186.234.33/index.html": "http://35.186.234.33/index.html?Expires=1549751401"
        "&KeyName=my-key&Signature=CRFqQnVfFyiUyR63OQf-HRUpIwc=",
        "http://www.example.com/": "http://www.example.com/?Expires=1549751401"
        "&KeyName=my-key&Signature=OqDUFfHpN5Vxga6r80bhsgxKves=",
        "http://www.example.com/some/path?some=query&another=param": "http://www.example.com"
        "/some/path?some=query&another=param&Expires=1549751401&KeyName=my-key"
        "&Signature=9Q9TCxSju8-W5nUkk5CuTrun2_o=",
    }
    for url, signed in expected.items():
        assert sign_cdn_url(url, key_name="my-key", key=key, expires=1549751401) == signed


@pytest.mark.parametrize(
    "changes",
    [
        {"gcs_cdn_signing_key": SecretStr("no-colon")},
        {"gcs_cdn_signing_key": SecretStr("name:" + base64.urlsafe_b64encode(b"short").decode())},
        {"gcs_cdn_signing_key": SecretStr("name:not base64!")},
        {"gcs_cdn_url": "cdn.example.com"},
        {"gcs_cdn_url": "https://cdn.example.com/?x=1"},
    ],
)
def test_settings_refuse_a_malformed_cdn(changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Settings(gcs_bucket="b", **changes)


def _cdn_link(url: str) -> tuple[str, int, str, str]:
    """(the URL without its signature, Expires, KeyName, Signature) of a signed CDN link."""
    unsigned, _, signature = url.rpartition("&Signature=")
    query = parse_qs(urlsplit(unsigned).query)
    return unsigned, int(query["Expires"][0]), query["KeyName"][0], signature


def _verify(url: str) -> int:
    """Check a link as Cloud CDN does (HMAC-SHA1 of everything before ``&Signature=``);
    its expiry."""
    unsigned, expires, key_name, signature = _cdn_link(url)
    assert key_name == "assets-key"
    digest = hmac.new(base64.urlsafe_b64decode(KEY), unsigned.encode(), hashlib.sha1).digest()
    assert hmac.compare_digest(base64.urlsafe_b64decode(signature), digest)
    return expires


async def test_asset_urls_go_through_the_cdn_and_working_files_stay_signed(
    gcs_client: Any, gcs_bucket: str, signing_credentials: Any
) -> None:
    storage = GCSStorage(gcs_bucket, client=gcs_client, signing_credentials=signing_credentials)
    character = keys.character_assets(uuid.uuid4()) + "character.webm"
    photo = keys.input_photo(uuid.uuid4(), "png")
    ttl = timedelta(minutes=15)

    def link(settings: Settings, key: str) -> str:
        return asset_url(settings, storage, key, expires_in=ttl, content_type="video/webm")

    signed = Settings(gcs_bucket=gcs_bucket, gcs_cdn_url=CDN + "/", gcs_cdn_signing_key=SIGNING_KEY)  # type: ignore[arg-type]
    before = time.time()
    url = link(signed, character)
    assert url.startswith(f"{CDN}/{character}?Expires=")
    # valid for one to two periods, and the same link throughout a period
    assert before + ttl.total_seconds() < _verify(url) <= time.time() + 2 * ttl.total_seconds()
    assert link(signed, character) == url

    plain = Settings(gcs_bucket=gcs_bucket, gcs_cdn_url=CDN)
    assert link(plain, character) == f"{CDN}/{character}"

    # A working file never goes through the CDN: it is the bucket's V4 signed URL.
    for settings in (signed, plain, Settings(gcs_bucket=gcs_bucket)):
        working = link(settings, photo)
        assert not working.startswith(CDN)
        assert f"/{gcs_bucket}/{photo}?" in working
        assert "X-Goog-Algorithm=GOOG4-RSA-SHA256" in working
        assert "X-Goog-Expires=900" in working
    # Without a CDN, characters' assets are signed bucket URLs too.
    assert "X-Goog-Signature=" in link(Settings(gcs_bucket=gcs_bucket), character)


async def test_the_api_answers_a_characters_assets_as_cdn_links(
    db: Any,
    http: httpx.AsyncClient,
    gcs_emulator_url: str,
    gcs_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """GET /v1/characters/{id} of an API configured with the bucket and a CDN (the rest of
    its settings are the test stack's)."""
    user = await signup(http)
    user_id = uuid.UUID(user.id)
    generation_id = await insert_generation(db, user_id)
    character_id = uuid.uuid4()
    prefix = keys.character_assets(character_id)
    async with db.connection() as conn:
        await records.insert_character(
            conn,
            records.Character(
                id=character_id,
                user_id=user_id,
                generation_id=generation_id,
                prompt="a knight",
                webm_key=prefix + "character.webm",
                webp_key=prefix + "character.webp",
                png_key=prefix + "poster.png",
                width=512,
                height=512,
                created_at=datetime.now(UTC),
            ),
        )
    settings = Settings(gcs_bucket=gcs_bucket, gcs_cdn_url=CDN, gcs_cdn_signing_key=SIGNING_KEY)  # type: ignore[arg-type]
    app = create_app(settings)
    app.state.settings = settings
    app.state.db = db
    with monkeypatch.context() as patch:
        patch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator_url)
        app.state.storage = storage_from_settings(settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=settings.public_url) as api:
        one = await api.get(f"/v1/characters/{character_id}", headers=user.headers)
        listed = await api.get("/v1/characters", headers=user.headers)
    assert one.status_code == 200, one.text
    assets = one.json()["assets"]
    for fmt, name in (
        ("webm", "character.webm"),
        ("webp", "character.webp"),
        ("png", "poster.png"),
    ):
        assert assets[fmt].startswith(f"{CDN}/{prefix}{name}?Expires="), assets[fmt]
        assert _verify(assets[fmt]) > time.time()
    assert listed.json()["characters"][0]["assets"] == assets
