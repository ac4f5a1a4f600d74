"""Checking an uploaded photo before anything is stored or charged."""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass

from fastapi import UploadFile
from PIL import Image, UnidentifiedImageError

from api.errors import Invalid, PayloadTooLarge, UnsupportedMediaType

READ_CHUNK = 1024 * 1024
MIN_SIDE = 64
MAX_PIXELS = 64_000_000  # refuse decompression bombs

_FORMATS = {
    "JPEG": ("image/jpeg", "jpg"),
    "PNG": ("image/png", "png"),
    "WEBP": ("image/webp", "webp"),
}


@dataclass(frozen=True)
class CheckedPhoto:
    data: bytes
    content_type: str
    extension: str
    width: int
    height: int


def _sniff(head: bytes) -> str | None:
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


async def read_photo(photo: UploadFile, *, max_bytes: int) -> CheckedPhoto:
    """The photo's bytes, or a 413 / 415 / 422 that says what is wrong."""
    chunks: list[bytes] = []
    total = 0
    while chunk := await photo.read(READ_CHUNK):
        total += len(chunk)
        if total > max_bytes:
            raise PayloadTooLarge(f"The photo is larger than {max_bytes // (1024 * 1024)} MB.")
        chunks.append(chunk)
    data = b"".join(chunks)
    # Decoding a large photo takes a while of CPU: off the event loop, so the streams
    # of every other client served by this process keep flowing meanwhile.
    return await asyncio.to_thread(_check, data)


def _check(data: bytes) -> CheckedPhoto:
    if not data:
        raise Invalid("The photo is empty.")
    kind = _sniff(data[:16])
    if kind is None:
        raise UnsupportedMediaType("The photo must be a JPEG, PNG or WebP image.")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != kind:
                raise UnsupportedMediaType("The photo must be a JPEG, PNG or WebP image.")
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise PayloadTooLarge("The photo has too many pixels.")
            image.load()  # decodes fully: a truncated or corrupt file fails here
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise Invalid("The photo could not be read; the file may be damaged.") from err
    if min(width, height) < MIN_SIDE:
        raise Invalid(f"The photo is too small; it needs at least {MIN_SIDE} pixels a side.")
    content_type, extension = _FORMATS[kind]
    return CheckedPhoto(data, content_type, extension, width, height)
