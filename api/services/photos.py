"""Checking an uploaded photo, and keeping only a clean copy of it.

What is stored is never the uploaded file. The upload is identified by its bytes (not
its name or declared type), its dimensions are checked from the header before a pixel is
decoded, and the picture is then decoded, turned upright (EXIF orientation), converted
to 8-bit sRGB (16-bit, grey, palette, CMYK and wide-gamut photos alike), downscaled to
the largest size the pipeline renders, and encoded afresh. So no metadata survives (GPS
position, camera serial, the owner's name), nor anything hidden after the image data (a
ZIP, an HTML page, padding).
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from typing import Protocol

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from api.services.errors import InvalidInput, PhotoTooLarge, PhotoUnsupported
from infra import photo_rules

READ_CHUNK = 1024 * 1024
JPEG_QUALITY = 92
_KINDS = ("JPEG", "PNG", "WEBP")
_UNSUPPORTED = "The photo must be a JPEG, PNG or WebP image."
_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


class Upload(Protocol):
    """What a photo is read from: FastAPI's UploadFile, or any async file alike."""

    async def read(self, size: int = -1) -> bytes: ...

    async def seek(self, offset: int) -> None: ...


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


async def read_photo(photo: Upload, *, max_bytes: int, max_pixels: int) -> CheckedPhoto:
    """A clean copy of the photo, or PhotoTooLarge / PhotoUnsupported / InvalidInput saying
    what is wrong."""
    chunks: list[bytes] = []
    total = 0
    while chunk := await photo.read(READ_CHUNK):
        total += len(chunk)
        if total > max_bytes:
            raise PhotoTooLarge(f"The photo is larger than {max_bytes // (1024 * 1024)} MB.")
        chunks.append(chunk)
    data = b"".join(chunks)
    # Decoding a large photo takes a while of CPU: off the event loop, so the streams
    # of every other client served by this process keep flowing meanwhile.
    return await asyncio.to_thread(clean_photo, data, max_pixels)


def clean_photo(data: bytes, max_pixels: int) -> CheckedPhoto:
    if not data:
        raise InvalidInput("The photo is empty.")
    kind = _sniff(data[:16])
    if kind is None:
        raise PhotoUnsupported(_UNSUPPORTED)
    try:
        with Image.open(io.BytesIO(data), formats=_KINDS) as image:
            if image.format != kind:
                raise PhotoUnsupported(_UNSUPPORTED)
            width, height = image.size  # from the header: nothing decoded yet
            if width * height > max_pixels:
                raise PhotoTooLarge(
                    f"The photo has {width}x{height} pixels; at most {max_pixels:,} are accepted."
                )
            _check_size(width, height)
            if kind == "JPEG":  # decode at a reduced scale when that is enough
                image.draft(None, (photo_rules.MAX_SIDE, photo_rules.MAX_SIDE))
            image.load()  # decodes fully: a truncated or corrupt file fails here
            clean = _normalised(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InvalidInput("The photo could not be read; the file may be damaged.") from err
    except Image.DecompressionBombError as err:
        raise PhotoTooLarge("The photo has too many pixels.") from err
    return _encode(clean)


def _check_size(width: int, height: int) -> None:
    """Refuse, from the header alone, a photo whose stored copy (downscaled to MAX_SIDE on
    its long side) would fall under the pipeline's minimum short side."""
    if min(width, height) < photo_rules.MIN_SIDE:
        raise InvalidInput(
            f"The photo is too small ({width}x{height}); it needs at least "
            f"{photo_rules.MIN_SIDE} pixels on its short side."
        )
    scale = min(1.0, photo_rules.MAX_SIDE / max(width, height))
    if round(min(width, height) * scale) < photo_rules.MIN_SIDE:
        raise InvalidInput(
            f"The photo is too narrow ({width}x{height}); at {photo_rules.MAX_SIDE} pixels "
            f"on its long side it needs at least {photo_rules.MIN_SIDE} on its short side."
        )


def _normalised(image: Image.Image) -> Image.Image:
    """Upright, 8-bit sRGB (with alpha if it has any), at most MAX_SIDE a side."""
    icc = image.info.get("icc_profile")
    upright = ImageOps.exif_transpose(image)
    if upright.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grey: scale to 8 bits (a plain convert would clip everything above 255).
        upright = upright.convert("I").point(lambda v: v * (1 / 257)).convert("L")
    has_alpha = upright.mode in ("RGBA", "LA", "PA") or (
        upright.mode == "P" and "transparency" in upright.info
    )
    if icc and upright.mode in ("RGB", "RGBA", "CMYK", "L"):
        upright = _to_srgb(upright, icc)
    upright = upright.convert("RGBA" if has_alpha else "RGB")
    upright.thumbnail((photo_rules.MAX_SIDE, photo_rules.MAX_SIDE), Image.Resampling.LANCZOS)
    return upright


def _to_srgb(image: Image.Image, icc: bytes) -> Image.Image:
    """Colours as the camera meant them, in sRGB; unchanged if the profile is unusable."""
    mode = "RGBA" if image.mode == "RGBA" else "RGB"
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        converted = ImageCms.profileToProfile(image, source, _SRGB, outputMode=mode)
    except (ImageCms.PyCMSError, OSError, ValueError):
        return image
    return converted or image


def _encode(image: Image.Image) -> CheckedPhoto:
    """A fresh file: PNG when the photo has transparency, JPEG otherwise; no metadata."""
    out = io.BytesIO()
    image.info = {}  # Pillow's PNG writer would otherwise copy the ICC profile and text
    if image.mode == "RGBA":
        image.save(out, format="PNG", optimize=False)
        content_type, extension = "image/png", "png"
    else:
        image.save(out, format="JPEG", quality=JPEG_QUALITY, optimize=True)
        content_type, extension = "image/jpeg", "jpg"
    return CheckedPhoto(out.getvalue(), content_type, extension, image.width, image.height)
