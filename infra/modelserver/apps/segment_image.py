"""``bitbuddies/segment-image``: a person mask by GrabCut seeded from the face box.

GrabCut needs no weights: given rough "surely person / probably person / probably
background" seeds it fits colour models and cuts along edges. The face box tells us
where the person is (the body hangs below it, ~3 face-widths wide), so the seeds are
good; at ~256 px it takes a fraction of a second. The cut is then upscaled and cleaned:
open/close to drop specks and fill nicks, keep the largest blob, fill its holes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from infra.modelserver.apps.base import SIZE_FIELD, URL_PATTERN, AppSpec, Box, LogFn, OutputFile
from infra.modelserver.fetch import fetch_input
from infra.modelserver.media import U8, fit_max_side, load_image, save_png
from infra.photo_rules import Box as Rect
from infra.photo_rules import implied_figure

WORK_SIDE = 256
GRABCUT_ITERATIONS = 4
FAR_SIDE_FACES = 2.6
TORSO_FACES = 3.6


class SegmentImageInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    image_url: str = Field(pattern=URL_PATTERN)
    size: int = SIZE_FIELD  # accepted for symmetry; the mask matches the input image
    face: Box | None = Field(None, description="Face box in the input image's pixels")


def _seeds(height: int, width: int, face: Rect | None) -> U8:
    """GrabCut's initial labels for an image of this size."""
    mask = np.full((height, width), cv2.GC_PR_BGD, np.uint8)
    if face is None:
        # No face: assume a centred subject, as a portrait crop would have.
        x0, x1 = round(width * 0.2), round(width * 0.8)
        y0 = round(height * 0.1)
        mask[y0:, x0:x1] = cv2.GC_PR_FGD
        cx, cy = width // 2, round(height * 0.55)
        mask[cy - height // 10 : cy + height // 10, cx - width // 12 : cx + width // 12] = (
            cv2.GC_FGD
        )
    else:
        fig = implied_figure(face)
        # Probably the person: a head-wide column down to the chin, then the body box.
        shoulders = face.y + face.h + face.h // 4
        mask[max(0, shoulders) : max(0, fig.y + fig.h), max(0, fig.x) : max(0, fig.x + fig.w)] = (
            cv2.GC_PR_FGD
        )
        head_margin = round(face.w * 0.35)
        mask[
            max(0, fig.y) : max(0, shoulders),
            max(0, face.x - head_margin) : max(0, face.x + face.w + head_margin),
        ] = cv2.GC_PR_FGD
        # Far to the sides (beyond ~2.5 face-widths from the face's centre) nobody's
        # body reaches; calling that surely background stops the cut leaking into
        # same-coloured scenery, which cartoon palettes make common.
        cx = face.x + face.w // 2
        reach = face.w * FAR_SIDE_FACES
        mask[:, : max(0, round(cx - reach))] = cv2.GC_BGD
        mask[:, max(0, round(cx + reach)) :] = cv2.GC_BGD
        # Surely the person: the face centre up to the hairline, and a strip down the
        # middle of the neck and torso to the hips.
        mask[
            max(0, face.y - face.h // 8) : face.y + face.h * 3 // 4,
            face.x + face.w // 4 : face.x + face.w * 3 // 4,
        ] = cv2.GC_FGD
        torso_bottom = min(height, round(face.y + face.h * TORSO_FACES))
        mask[
            face.y + face.h : torso_bottom,
            round(cx - face.w * 0.2) : round(cx + face.w * 0.2),
        ] = cv2.GC_FGD
    # A thin frame is surely background, except the bottom edge under the figure,
    # where bodies usually leave the picture.
    border = max(2, min(height, width) // 64)
    keep = mask.copy()
    mask[:border, :] = cv2.GC_BGD
    mask[:, :border] = cv2.GC_BGD
    mask[:, width - border :] = cv2.GC_BGD
    mask[height - border :, :] = np.where(
        keep[height - border :, :] == cv2.GC_PR_FGD, cv2.GC_PR_FGD, cv2.GC_BGD
    )
    return mask


def _largest_component(binary: U8) -> U8:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if count <= 1:
        return binary
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return np.where(labels == largest, 255, 0).astype(np.uint8)


def fill_holes(binary: U8) -> U8:
    """Fill background pockets enclosed by the foreground (flood fill from the frame)."""
    h, w = binary.shape
    padded = cv2.copyMakeBorder(binary, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    flood = padded.copy()
    cv2.floodFill(flood, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 255)
    holes = cv2.bitwise_not(flood)[1:-1, 1:-1]
    return np.asarray(cv2.bitwise_or(binary, holes), dtype=np.uint8)


def clean_mask(binary: U8) -> U8:
    """Open/close with a size-relative kernel, keep the largest blob, fill its holes."""
    k = max(3, (min(binary.shape) // 100) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    out = cv2.morphologyEx(binary, cv2.MORPH_OPEN, kernel)
    out = cv2.morphologyEx(out, cv2.MORPH_CLOSE, kernel, iterations=2)
    return fill_holes(_largest_component(np.asarray(out, dtype=np.uint8)))


def segment_person(rgb: U8, face: Rect | None) -> U8:
    """A 0/255 mask of the person in ``rgb`` (same size); ``face`` in ``rgb`` pixels."""
    height, width = rgb.shape[:2]
    small = fit_max_side(rgb, min(WORK_SIDE, max(height, width)))
    scale = small.shape[1] / width
    small_face = None
    if face is not None:
        small_face = Rect(
            round(face.x * scale),
            round(face.y * scale),
            max(2, round(face.w * scale)),
            max(2, round(face.h * scale)),
        )
    labels = _seeds(small.shape[0], small.shape[1], small_face)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    bgr = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
    cv2.grabCut(bgr, labels, None, bgd, fgd, GRABCUT_ITERATIONS, cv2.GC_INIT_WITH_MASK)  # type: ignore[call-overload]
    person = np.where((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD), 1.0, 0.0)
    up = cv2.resize(person.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    binary = np.where(up >= 0.5, 255, 0).astype(np.uint8)
    return clean_mask(binary)


def run(inputs: SegmentImageInput, work_dir: Path, log: LogFn) -> dict[str, Any]:
    loaded = load_image(fetch_input(inputs.image_url, work_dir))
    face = None
    if inputs.face is not None:
        face = Rect(inputs.face.x, inputs.face.y, inputs.face.w, inputs.face.h)
    log(f"grabcut {loaded.original_width}x{loaded.original_height}, face={face}")
    mask = segment_person(loaded.rgb, face)
    log(f"foreground {float((mask > 0).mean()):.1%}")
    path = save_png(mask, work_dir / "mask.png")
    height, width = mask.shape
    return {"mask": OutputFile(path, "image/png", width=width, height=height)}


SPEC = AppSpec(SegmentImageInput, run, "Person mask (GrabCut seeded from the face box)")
