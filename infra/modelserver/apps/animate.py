"""``bitbuddies/animate``: the cut-out character bobs, squashes and sways in place.

The figure (image x mask) is kept as premultiplied RGBA so warping it with bilinear
``warpAffine`` does not drag dark fringes from the transparent area into its edges.
Every frame is one affine transform about the figure's feet: lift (bob), squash when
landing and stretch when rising (volume kept: sx = 1/sqrt(sy)), and a slow sway. The
background stays still: the photo with the figure inpainted away. All motions complete
whole cycles within the clip, so it loops seamlessly. The prompt picks the temperament
("dance", "jump", "calm", ...). Frames stream straight into ffmpeg; none are kept.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from infra.modelserver.apps.base import URL_PATTERN, AppSpec, LogFn, OutputFile
from infra.modelserver.fetch import fetch_input
from infra.modelserver.media import F32, U8, VideoWriter, even_crop, load_image, load_mask

INPAINT_SIDE = 256  # inpainting is the slow part; do it small, it is blurry anyway


class AnimateInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    image_url: str = Field(pattern=URL_PATTERN)
    mask_url: str = Field(pattern=URL_PATTERN)
    prompt: str = Field("", max_length=2000)
    fps: int = Field(24, ge=1, le=60)
    duration_seconds: float = Field(5.0, gt=0, le=30)


@dataclass(frozen=True)
class Motion:
    bob: float = 0.035  # lift, as a fraction of the figure's height
    squash: float = 0.045  # vertical scale change at the extremes
    sway_degrees: float = 3.0
    shift: float = 0.02  # side-to-side drift with the sway, as a fraction of the height
    hz: float = 1.0  # bounces per second


def parse_motion(prompt: str) -> Motion:
    words = set(re.findall(r"[a-z]+", prompt.lower()))
    if words & {"dance", "dancing", "party", "groove", "wiggle"}:
        return Motion(bob=0.04, squash=0.05, sway_degrees=7.0, shift=0.04, hz=1.5)
    if words & {"jump", "jumping", "bounce", "bouncy", "happy", "excited", "hop"}:
        return Motion(bob=0.08, squash=0.08, sway_degrees=2.0, shift=0.015, hz=1.2)
    if words & {"calm", "idle", "sleepy", "relaxed", "breathing", "chill", "slow"}:
        return Motion(bob=0.012, squash=0.02, sway_degrees=1.5, shift=0.012, hz=0.5)
    return Motion()


def frame_count(fps: int, duration_seconds: float) -> int:
    return max(1, round(fps * duration_seconds))


def remove_figure(rgb: U8, mask: U8) -> U8:
    """The background with the figure inpainted away (computed small, pasted back)."""
    h, w = mask.shape
    grown = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9)))
    scale = min(1.0, INPAINT_SIDE / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small_rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    small_mask = cv2.resize(grown, size, interpolation=cv2.INTER_NEAREST)
    filled = cv2.inpaint(small_rgb, small_mask, 5, cv2.INPAINT_TELEA)
    filled_big = cv2.resize(filled, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.where(grown[..., None] > 0, filled_big, rgb).astype(np.uint8)


def _affine(
    anchor: tuple[float, float], dx: float, dy: float, sx: float, sy: float, theta: float
) -> F32:
    """T(anchor + (dx, dy)) . R(theta) . S(sx, sy) . T(-anchor) as a 2x3 matrix."""
    ax, ay = anchor
    c, s = math.cos(theta), math.sin(theta)
    linear = np.array([[c * sx, -s * sy], [s * sx, c * sy]], dtype=np.float32)
    offset = np.array([ax + dx, ay + dy], dtype=np.float32) - linear @ np.array(
        [ax, ay], np.float32
    )
    return np.hstack([linear, offset[:, None]]).astype(np.float32)


def animate_frames(
    rgb: U8, mask: U8, prompt: str, fps: int, duration_seconds: float
) -> Iterator[U8]:
    """Yield the clip's RGB frames (even-sized crops of ``rgb``)."""
    for frame, _ in animate_layers(rgb, mask, prompt, fps, duration_seconds):
        yield frame


def animate_layers(
    rgb: U8, mask: U8, prompt: str, fps: int, duration_seconds: float
) -> Iterator[tuple[U8, F32]]:
    """Yield each frame with the figure's alpha in it (the ground truth for a matte)."""
    rgb, mask = even_crop(rgb), even_crop(mask)
    h, w = mask.shape
    motion = parse_motion(prompt)
    n = frame_count(fps, duration_seconds)
    background = remove_figure(rgb, mask).astype(np.float32)
    alpha = cv2.GaussianBlur(mask, (3, 3), 0).astype(np.float32) / 255.0
    figure = np.dstack([rgb.astype(np.float32) * alpha[..., None], alpha]).astype(np.float32)

    ys, xs = np.nonzero(mask > 127)
    if len(ys) == 0:
        for _ in range(n):
            yield rgb, np.zeros((h, w), np.float32)
        return
    top, bottom = float(ys.min()), float(ys.max())
    anchor = ((float(xs.min()) + float(xs.max())) / 2, bottom)
    fig_h = bottom - top + 1
    # A figure cut by the frame's bottom edge must not lift off it: bob becomes stretch.
    cut_at_bottom = bottom >= h - 2
    bounces = max(1, round(duration_seconds * motion.hz))
    sways = max(1, bounces // 2)
    for i in range(n):
        t = i / n
        lift = abs(math.sin(math.pi * bounces * t))  # 0 on the ground, 1 at the top
        sy = 1 + motion.squash * (2 * lift - 1)
        dy = 0.0 if cut_at_bottom else -motion.bob * fig_h * lift
        if cut_at_bottom:
            sy += motion.bob * lift
        sx = 1 / math.sqrt(sy)
        swing = math.sin(2 * math.pi * sways * t)
        theta = math.radians(motion.sway_degrees) * swing
        dx = motion.shift * fig_h * swing
        matrix = _affine(anchor, dx, dy, sx, sy, theta)
        warped = cv2.warpAffine(
            figure,
            matrix,
            (w, h),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=(0, 0, 0, 0),
        )
        a = warped[..., 3:4]
        frame = warped[..., :3] + background * (1 - a)
        yield np.clip(frame + 0.5, 0, 255).astype(np.uint8), np.asarray(a[..., 0], np.float32)


def run(inputs: AnimateInput, work_dir: Path, log: LogFn) -> dict[str, Any]:
    loaded = load_image(fetch_input(inputs.image_url, work_dir))
    rgb = loaded.rgb
    mask = load_mask(fetch_input(inputs.mask_url, work_dir), (rgb.shape[1], rgb.shape[0]))
    n = frame_count(inputs.fps, inputs.duration_seconds)
    h, w = even_crop(mask).shape
    log(f"animating {w}x{h}, {n} frames at {inputs.fps} fps, motion={parse_motion(inputs.prompt)}")
    out = work_dir / "animation.mp4"
    step = max(1, inputs.fps)
    with VideoWriter(out, w, h, inputs.fps) as writer:
        for i, frame in enumerate(
            animate_frames(rgb, mask, inputs.prompt, inputs.fps, inputs.duration_seconds), 1
        ):
            writer.write(frame)
            if i % step == 0 or i == n:
                log(f"frame {i}/{n}")
    return {
        "video": OutputFile(out, "video/mp4", width=w, height=h),
        "fps": inputs.fps,
        "num_frames": n,
    }


SPEC = AppSpec(AnimateInput, run, "Cut-out figure animated over a static background (MP4)")
