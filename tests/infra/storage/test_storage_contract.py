"""The Storage contract, checked against both backends (GCS via a real emulator)."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from google.cloud import storage
from pydantic import SecretStr

from infra.settings import Settings
from infra.storage import (
    CHUNK_SIZE,
    LocalStorage,
    ObjectNotFound,
    Storage,
    storage_from_settings,
    verify_signature,
)
from infra.storage.gcs import GCSStorage

SECRET = "test-signing-secret"
PUBLIC_URL = "http://testserver"


@pytest.fixture(params=["local", "gcs"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "store", public_url=PUBLIC_URL, signing_secret=SECRET)
    client: storage.Client = request.getfixturevalue("gcs_client")
    # The smallest legal resumable chunk, so a few MiB take many requests.
    return GCSStorage(
        request.getfixturevalue("gcs_bucket"),
        client=client,
        signing_credentials=request.getfixturevalue("signing_credentials"),
        upload_chunk_size=256 * 1024,
    )


@pytest.fixture
def prefix() -> str:
    """Tests share one emulator bucket; a fresh prefix keeps them apart."""
    return f"t/{uuid.uuid4().hex}"


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        await asyncio.sleep(0)
        yield data[start : start + size]


async def failing_after(data: bytes, size: int) -> AsyncIterator[bytes]:
    async for chunk in chunked(data, size):
        yield chunk
    raise RuntimeError("source failed mid-stream")


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def collect(stream: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in stream]


async def test_round_trip_of_a_multi_mib_stream(backend: Storage, prefix: str) -> None:
    data = os.urandom(5 * 1024 * 1024 + 12345)
    key = f"{prefix}/video.webm"

    written = await backend.write_stream(key, chunked(data, 300_001), content_type="video/webm")

    assert written == len(data)
    assert await backend.size(key) == len(data)
    chunks = await collect(backend.read_stream(key))
    assert all(0 < len(c) <= CHUNK_SIZE for c in chunks)
    assert len(chunks) >= len(data) // CHUNK_SIZE
    assert b"".join(chunks) == data


async def test_small_objects_and_overwrite(backend: Storage, prefix: str) -> None:
    key = f"{prefix}/photo.png"
    assert await backend.write_bytes(key, b"first", content_type="image/png") == 5
    assert await backend.read_bytes(key) == b"first"
    await backend.write_stream(key, chunked(b"second version", 4), content_type="image/png")
    assert await backend.read_bytes(key) == b"second version"


async def test_empty_object(backend: Storage, prefix: str) -> None:
    key = f"{prefix}/empty.bin"
    assert await backend.write_stream(key, chunked(b"", 1), content_type="x/y") == 0
    assert await backend.exists(key)
    assert await backend.size(key) == 0
    assert await collect(backend.read_stream(key)) == []


async def test_exists_size_and_idempotent_delete(backend: Storage, prefix: str) -> None:
    key = f"{prefix}/a/b/c.bin"
    assert not await backend.exists(key)
    await backend.write_bytes(key, b"12345", content_type="application/octet-stream")
    assert await backend.exists(key)
    assert await backend.size(key) == 5

    await backend.delete(key)
    await backend.delete(key)

    assert not await backend.exists(key)
    with pytest.raises(ObjectNotFound):
        await backend.size(key)


async def test_delete_prefix_removes_one_folder_and_nothing_beside_it(
    backend: Storage, prefix: str
) -> None:
    kept = [f"{prefix}/g/10/input/photo.jpg", f"{prefix}/g/1.txt", f"{prefix}/c/1/a.webm"]
    gone = [f"{prefix}/g/1/input/photo.jpg", f"{prefix}/g/1/cartoonify/image.png"]
    for key in kept + gone:
        await backend.write_bytes(key, b"x", content_type="application/octet-stream")
    assert await backend.delete_prefix(f"{prefix}/g/1/") == 2
    assert await backend.delete_prefix(f"{prefix}/g/1/") == 0
    assert [await backend.exists(k) for k in gone] == [False, False]
    assert [await backend.exists(k) for k in kept] == [True, True, True]
    with pytest.raises(ValueError):
        await backend.delete_prefix(f"{prefix}/g/1")  # not a folder: would reach g/10


async def test_local_delete_leaves_no_empty_folders(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "store", public_url=PUBLIC_URL, signing_secret=SECRET)
    await store.write_bytes("g/1/input/photo.jpg", b"x", content_type="image/jpeg")
    await store.write_bytes("g/2/input/photo.jpg", b"y", content_type="image/jpeg")
    await store.delete("g/1/input/photo.jpg")
    assert sorted(p.relative_to(store.root).as_posix() for p in store.root.rglob("*")) == [
        "g",
        "g/2",
        "g/2/input",
        "g/2/input/photo.jpg",
    ]


async def test_missing_objects_raise_object_not_found(backend: Storage, prefix: str) -> None:
    key = f"{prefix}/missing.bin"
    with pytest.raises(ObjectNotFound):
        await collect(backend.read_stream(key))
    with pytest.raises(ObjectNotFound):
        await backend.read_bytes(key)
    with pytest.raises(ObjectNotFound):
        await backend.size(key)


async def test_failure_mid_stream_leaves_no_object(
    backend: Storage, prefix: str, tmp_path: Path
) -> None:
    key = f"{prefix}/broken.webm"
    # Enough data that GCS has started a resumable session and sent chunks before failing.
    data = os.urandom(3 * 1024 * 1024)

    with pytest.raises(RuntimeError, match="mid-stream"):
        await backend.write_stream(key, failing_after(data, 100_000), content_type="video/webm")
    gc.collect()  # a dropped GCS writer finalises on collection unless it was abandoned

    assert not await backend.exists(key)
    assert files_under(tmp_path / "store") == []


async def test_failure_mid_stream_keeps_the_previous_version(backend: Storage, prefix: str) -> None:
    key = f"{prefix}/kept.bin"
    await backend.write_bytes(key, b"old", content_type="application/octet-stream")

    with pytest.raises(RuntimeError):
        await backend.write_stream(
            key, failing_after(os.urandom(600_000), 65536), content_type="x/y"
        )
    gc.collect()

    assert await backend.read_bytes(key) == b"old"


async def test_cancellation_mid_stream_leaves_no_object(
    backend: Storage, prefix: str, tmp_path: Path
) -> None:
    key = f"{prefix}/cancelled.bin"
    sent = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield os.urandom(200_000)
        sent.set()
        await asyncio.Event().wait()
        yield b"never"

    task = asyncio.create_task(backend.write_stream(key, stalls(), content_type="x/y"))
    await sent.wait()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gc.collect()

    assert not await backend.exists(key)
    assert files_under(tmp_path / "store") == []


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/abs/path.png",
        "../escape.png",
        "a/../../escape.png",
        "a/./b.png",
        "a//b.png",
        "a/b/",
        "a\\b.png",
        "a b.png",
        "a/.hidden",
        "caf\u00e9.png",
        "a?b=c",
        "x" * 1025,
    ],
)
async def test_invalid_keys_are_rejected(backend: Storage, key: str) -> None:
    with pytest.raises(ValueError):
        await backend.write_bytes(key, b"x", content_type="x/y")
    with pytest.raises(ValueError):
        await backend.exists(key)
    with pytest.raises(ValueError):
        backend.read_stream(key)
    with pytest.raises(ValueError):
        await backend.delete(key)


async def test_local_writes_land_under_root_only(tmp_path: Path) -> None:
    local = LocalStorage(tmp_path / "store", public_url=PUBLIC_URL, signing_secret=SECRET)
    await local.write_bytes("generations/g1/input/photo.png", b"png", content_type="image/png")
    path = local.path_for("generations/g1/input/photo.png")
    assert path == (tmp_path / "store" / "generations/g1/input/photo.png").resolve()
    assert path.read_bytes() == b"png"
    assert files_under(tmp_path) == [path]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # readable by the API's user too


def _parse_local_url(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == PUBLIC_URL
    assert parts.path.startswith("/v1/files/")
    query = parse_qs(parts.query)
    return parts.path.removeprefix("/v1/files/"), int(query["expires"][0]), query["sig"][0]


async def test_local_signed_url_verifies_and_rejects_tampering(tmp_path: Path) -> None:
    local = LocalStorage(tmp_path, public_url=PUBLIC_URL + "/", signing_secret=SECRET)
    before = time.time()
    url = local.signed_url("characters/c1/character.webm", expires_in=timedelta(minutes=10))
    key, expires, sig = _parse_local_url(url)

    assert key == "characters/c1/character.webm"
    assert before + 600 - 1 <= expires <= time.time() + 600
    now = time.time()
    assert verify_signature(key, expires, sig, secret=SECRET, now=now)

    assert not verify_signature(
        "characters/c2/character.webm", expires, sig, secret=SECRET, now=now
    )
    assert not verify_signature(key, expires + 1, sig, secret=SECRET, now=now)
    flipped = ("0" if sig[0] != "0" else "1") + sig[1:]
    assert not verify_signature(key, expires, flipped, secret=SECRET, now=now)
    assert not verify_signature(key, expires, sig, secret="another-secret", now=now)
    assert not verify_signature(key, expires, "", secret=SECRET, now=now)
    assert not verify_signature(key, expires, "\u00e9" * 64, secret=SECRET, now=now)


async def test_local_signed_url_expires(tmp_path: Path) -> None:
    local = LocalStorage(tmp_path, public_url=PUBLIC_URL, signing_secret=SECRET)
    key, expires, sig = _parse_local_url(
        local.signed_url("a/b.png", expires_in=timedelta(seconds=30))
    )
    assert verify_signature(key, expires, sig, secret=SECRET, now=expires)
    assert not verify_signature(key, expires, sig, secret=SECRET, now=expires + 0.001)


async def test_gcs_signed_url_is_v4_and_fetchable(
    gcs_client: storage.Client, gcs_bucket: str, signing_credentials: Any, prefix: str
) -> None:
    gcs = GCSStorage(gcs_bucket, client=gcs_client, signing_credentials=signing_credentials)
    key = f"{prefix}/poster.png"
    await gcs.write_bytes(key, b"\x89PNG not really", content_type="image/png")

    url = gcs.signed_url(key, expires_in=timedelta(minutes=5), content_type="image/png")

    # The GCS emulator checks neither signature nor expiry, so assert the shape.
    assert "X-Goog-Signature=" in url
    assert "X-Goog-Algorithm=GOOG4-RSA-SHA256" in url
    assert "X-Goog-Expires=300" in url
    assert f"/{gcs_bucket}/{key}?" in url
    async with httpx.AsyncClient() as http:
        response = await http.get(url)
    assert response.status_code == 200
    assert response.content == b"\x89PNG not really"
    assert response.headers["content-type"] == "image/png"


async def test_gcs_stores_content_type(
    gcs_client: storage.Client, gcs_bucket: str, prefix: str
) -> None:
    gcs = GCSStorage(gcs_bucket, client=gcs_client, upload_chunk_size=256 * 1024)
    key = f"{prefix}/character.webm"
    await gcs.write_stream(key, chunked(os.urandom(700_000), 50_000), content_type="video/webm")
    blob = await asyncio.to_thread(gcs_client.bucket(gcs_bucket).get_blob, key)
    assert blob is not None
    assert blob.content_type == "video/webm"


def test_storage_from_settings_picks_local_without_a_bucket(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        gcs_bucket=None,
        signing_secret=SecretStr("s3cret"),
        public_url="http://x",
    )
    chosen = storage_from_settings(settings)
    assert isinstance(chosen, LocalStorage)
    assert chosen.root == (tmp_path / "storage").resolve()
    key, expires, sig = _parse_local_url_for(chosen, "http://x")
    assert verify_signature(key, expires, sig, secret="s3cret", now=time.time())


def _parse_local_url_for(local: LocalStorage, public_url: str) -> tuple[str, int, str]:
    parts = urlsplit(local.signed_url("a.png", expires_in=timedelta(seconds=60)))
    assert f"{parts.scheme}://{parts.netloc}" == public_url
    query = parse_qs(parts.query)
    return parts.path.removeprefix("/v1/files/"), int(query["expires"][0]), query["sig"][0]


async def test_storage_from_settings_picks_gcs_with_a_bucket(
    gcs_emulator_url: str,
    gcs_client: storage.Client,
    gcs_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    prefix: str,
) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator_url)
    chosen = storage_from_settings(Settings(data_dir=tmp_path, gcs_bucket=gcs_bucket))
    assert isinstance(chosen, GCSStorage)
    assert chosen.bucket_name == gcs_bucket
    await chosen.write_bytes(f"{prefix}/x.txt", b"via settings", content_type="text/plain")
    check = GCSStorage(gcs_bucket, client=gcs_client)
    assert await check.read_bytes(f"{prefix}/x.txt") == b"via settings"


async def test_a_signing_key_file_from_settings_signs_gcs_urls(
    gcs_emulator_url: str,
    gcs_bucket: str,
    signing_key_info: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    prefix: str,
) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator_url)
    key_file = tmp_path / "signer.json"
    key_file.write_text(json.dumps(signing_key_info))
    chosen = storage_from_settings(
        Settings(data_dir=tmp_path, gcs_bucket=gcs_bucket, gcs_signing_key_file=key_file)
    )
    await chosen.write_bytes(f"{prefix}/signed.txt", b"signed", content_type="text/plain")
    url = chosen.signed_url(f"{prefix}/signed.txt", expires_in=timedelta(minutes=1))
    credential = parse_qs(urlsplit(url).query)["X-Goog-Credential"][0]
    assert credential.startswith(signing_key_info["client_email"] + "/")
    async with httpx.AsyncClient() as http:
        assert (await http.get(url)).content == b"signed"
