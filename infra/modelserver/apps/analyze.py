"""``bitbuddies/analyze``: upright, resize, find faces, guess the body, judge usability.

Everything downstream works in the coordinates of the image this app returns, so the
face and figure boxes are in output-image pixels. The body box is a proportion rule
(people are ~7 face-heights tall and ~3 face-widths wide), which is what cartoonify
needs to decide whether to extend the canvas.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from infra import photo_rules
from infra.modelserver.apps.base import SIZE_FIELD, URL_PATTERN, AppSpec, LogFn, OutputFile
from infra.modelserver.fetch import fetch_input
from infra.modelserver.media import U8, fit_max_side, load_image, save_png

MIN_SHORT_SIDE = photo_rules.MIN_SIDE
UNIFORM_STD = 10.0
TOO_DARK_MEAN = 35.0
TOO_BRIGHT_MEAN = 225.0
DETECT_MAX_SIDE = 640  # Haar works well from here down to ~256 px; larger is just slower

FIGURE_WIDTH_FACES = 3.0
FIGURE_ABOVE_FACES = 0.5
FIGURE_BELOW_FACES = 7.0

_local = threading.local()


class AnalyzeInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    image_url: str = Field(pattern=URL_PATTERN)
    size: int = SIZE_FIELD


@dataclass(frozen=True)
class Rect:
    x: int
    y: int
    w: int
    h: int

    def as_dict(self) -> dict[str, int]:
        return {"x": self.x, "y": self.y, "w": self.w, "h": self.h}


def _cascade() -> cv2.CascadeClassifier:
    # CascadeClassifier keeps per-call scratch state: one instance per worker thread.
    cascade: cv2.CascadeClassifier | None = getattr(_local, "cascade", None)
    if cascade is None:
        path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"  # type: ignore[attr-defined]
        cascade = cv2.CascadeClassifier(path)
        if cascade.empty():
            raise RuntimeError(f"Could not load the Haar cascade at {path}")
        _local.cascade = cascade
    return cascade


def detect_faces(rgb: U8) -> list[Rect]:
    """Frontal faces in ``rgb`` pixels, largest first."""
    h, w = rgb.shape[:2]
    scale = min(1.0, DETECT_MAX_SIDE / max(h, w))
    small = fit_max_side(rgb, round(max(h, w) * scale)) if scale < 1 else rgb
    gray = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
    min_side = max(20, round(min(gray.shape[:2]) * 0.06))
    found = _cascade().detectMultiScale(
        gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side)
    )
    faces = [
        Rect(round(x / scale), round(y / scale), round(fw / scale), round(fh / scale))
        for (x, y, fw, fh) in (tuple(int(v) for v in f) for f in found)
    ]
    return sorted(faces, key=lambda r: r.w * r.h, reverse=True)


def estimate_figure(face: Rect) -> Rect:
    """The body box implied by a face, unclipped (may extend past the image)."""
    cx = face.x + face.w / 2
    width = face.w * FIGURE_WIDTH_FACES
    top = face.y - face.h * FIGURE_ABOVE_FACES
    bottom = face.y + face.h * FIGURE_BELOW_FACES
    return Rect(round(cx - width / 2), round(top), round(width), round(bottom - top))


def clip(rect: Rect, width: int, height: int) -> Rect | None:
    x0, y0 = max(0, rect.x), max(0, rect.y)
    x1, y1 = min(width, rect.x + rect.w), min(height, rect.y + rect.h)
    if x1 <= x0 or y1 <= y0:
        return None
    return Rect(x0, y0, x1 - x0, y1 - y0)


def quality_problems(rgb: U8, original_short_side: int) -> list[str]:
    problems = []
    if original_short_side < MIN_SHORT_SIDE:
        problems.append(
            f"The image is too small ({original_short_side} px on its short side; "
            f"at least {MIN_SHORT_SIDE} px needed)."
        )
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    mean, std = float(gray.mean()), float(gray.std())
    if std < UNIFORM_STD:
        problems.append("The image is nearly uniform; there is nothing to work with.")
    if mean < TOO_DARK_MEAN:
        problems.append("The image is too dark.")
    elif mean > TOO_BRIGHT_MEAN:
        problems.append("The image is too bright (overexposed).")
    return problems


def analyze_image(rgb: U8, original_short_side: int) -> dict[str, Any]:
    """Faces, figure and usability of an already upright, resized image."""
    height, width = rgb.shape[:2]
    problems = quality_problems(rgb, original_short_side)
    faces = detect_faces(rgb)
    figure: Rect | None = None
    full_body = False
    if faces:
        estimated = estimate_figure(faces[0])
        figure = clip(estimated, width, height)
        full_body = estimated.y + estimated.h <= height
    else:
        problems.append("No face or figure found; use a photo showing one person's face.")
    return {
        "faces": [f.as_dict() for f in faces],
        "figure": figure.as_dict() if figure else None,
        "full_body": full_body,
        "usable": not problems,
        "problems": problems,
    }


def run(inputs: AnalyzeInput, work_dir: Path, log: LogFn) -> dict[str, Any]:
    loaded = load_image(fetch_input(inputs.image_url, work_dir))
    log(f"decoded {loaded.original_width}x{loaded.original_height}, rotated {loaded.rotation}")
    rgb = fit_max_side(loaded.rgb, inputs.size)
    report = analyze_image(rgb, min(loaded.original_width, loaded.original_height))
    log(f"found {len(report['faces'])} face(s); usable={report['usable']}")
    out = save_png(rgb, work_dir / "analyzed.png")
    height, width = rgb.shape[:2]
    return {
        "image": OutputFile(out, "image/png", width=width, height=height),
        "rotation_applied": loaded.rotation,
        **report,
    }


SPEC = AppSpec(AnalyzeInput, run, "Upright + resize a photo; faces, body box, usability")
