"""Every model step's output is checked before the next step uses it, whichever provider
made it: an image decodes, a mask has its image's size and is not empty, a video has
frames. And the analysis step's verdict (usable, full body) is ours, made here from what
its model found (infra/photo_rules.py).

A failed check is a model failure (``MODEL_OUTPUT_INVALID``): the step's job produced
something we cannot use, the generation fails and its token is refunded; the owner is
alerted, as for any failure of ours or a provider's.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any, BinaryIO

import imageio_ffmpeg
from PIL import Image, ImageStat, UnidentifiedImageError
from temporalio.exceptions import ApplicationError

from activities.model_errors import MODEL_OUTPUT_INVALID
from infra import photo_rules
from workflows import contract

# The most pixels an output image may have (a 4096 px square): more is not a picture any
# step makes, and Pillow decodes it all.
MAX_OUTPUT_PIXELS = 4096 * 4096
VIDEO_CHECK_SECONDS = 60.0
# A still picture read as a video has one frame: an animation has more.
MIN_VIDEO_FRAMES = 2
_FRAMES = re.compile(rb"frame=\s*(\d+)")


class OutputInvalid(Exception):
    """An output is not what its role promises."""


def invalid(step: str, err: OutputInvalid) -> ApplicationError:
    return ApplicationError(
        f"{step} produced an output we cannot use: {err}",
        type=MODEL_OUTPUT_INVALID,
        non_retryable=True,
    )


async def check(role: str, path: Path, *, image_size: tuple[int, int] | None) -> dict[str, Any]:
    """Check one output file by its role; returns what was learned (its size, frames).
    ``image_size`` is the size of the step's input image, which a mask must match."""
    if role == contract.IMAGE:
        width, height = await asyncio.to_thread(picture_size, path)
        return {"width": width, "height": height}
    if role == contract.MASK:
        width, height = await asyncio.to_thread(_mask_size, path)
        if image_size is not None and (width, height) != image_size:
            raise OutputInvalid(
                f"the mask is {width}x{height}, its image {image_size[0]}x{image_size[1]}"
            )
        return {"width": width, "height": height}
    if role in (contract.VIDEO, contract.MASK_VIDEO):
        return {"frames": await _video_frames(path)}
    raise OutputInvalid(f"no check for an output of role {role!r}")


def _open(path: Path | BinaryIO) -> Image.Image:
    try:
        image = Image.open(path)
        if image.width * image.height > MAX_OUTPUT_PIXELS:
            raise OutputInvalid(f"the image has {image.width}x{image.height} pixels")
        image.load()  # decodes it all: a truncated or corrupt file fails here
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise OutputInvalid(f"the image does not decode ({err})") from err
    return image


def picture_size(path: Path | BinaryIO) -> tuple[int, int]:
    """An image's size, once it has decoded whole."""
    with _open(path) as image:
        if image.width < 1 or image.height < 1:
            raise OutputInvalid("the image is empty")
        return image.size


def _mask_size(path: Path) -> tuple[int, int]:
    with _open(path) as image:
        grey = image.getchannel("A") if "A" in image.getbands() else image.convert("L")
        _, brightest = grey.getextrema()
        if not brightest:
            raise OutputInvalid("the mask is empty: it keeps nothing of its image")
        return image.size


async def _video_frames(path: Path) -> int:
    """The video's frame count, read from its container (no decoding): ffmpeg copies its
    first video stream to nowhere and says how many frames it copied."""
    process = await asyncio.create_subprocess_exec(
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-hide_banner",
        "-nostdin",
        "-i",
        str(path),
        "-map",
        "0:v:0",
        "-c",
        "copy",
        "-f",
        "null",
        "-",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(VIDEO_CHECK_SECONDS):
            _, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise OutputInvalid(f"reading the video took over {VIDEO_CHECK_SECONDS:.0f} s") from None
    counts = _FRAMES.findall(err)
    if process.returncode != 0 or not counts:
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise OutputInvalid(f"the video does not read: {tail[0]}")
    frames = int(counts[-1])
    if frames < MIN_VIDEO_FRAMES:
        raise OutputInvalid(f"the video has {frames} frame(s): not an animation")
    return frames


async def judge_analysis(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """The analysis step's facts plus our verdict on the photo (infra/photo_rules.py).
    ``path`` is the analysed image; ``data`` what the model found: faces (largest first,
    in that image's pixels) and the photo's original size."""
    width, height, mean, std = await asyncio.to_thread(_grey_stats, path)
    faces = [photo_rules.Box.of(found) for found in data.get("faces") or []]
    original = [int(data.get(side) or 0) for side in ("original_width", "original_height")]
    short_side = min(original) if all(original) else min(width, height)
    verdict = photo_rules.judge(
        width=width,
        height=height,
        original_short_side=short_side,
        grey_mean=mean,
        grey_std=std,
        faces=sorted(faces, key=lambda f: f.w * f.h, reverse=True),
    )
    return {**data, "faces": [f.as_dict() for f in faces], **verdict.as_data()}


def _grey_stats(path: Path) -> tuple[int, int, float, float]:
    with _open(path) as image:
        stat = ImageStat.Stat(image.convert("L"))
        return image.width, image.height, float(stat.mean[0]), float(stat.stddev[0])
