"""``bitbuddies/analyze``: upright and resize a photo, find its faces (OpenCV's Haar
cascade), as a face-detection model would.

Everything downstream works in the coordinates of the image this app returns, so the
face boxes are in output-image pixels. Whether the photo is usable and shows the whole
body is not this app's to say: our own rules judge that from what it found
(infra/photo_rules.py), whichever provider found it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import cv2
from pydantic import BaseModel, ConfigDict, Field

from infra.modelserver.apps.base import SIZE_FIELD, URL_PATTERN, AppSpec, LogFn, OutputFile
from infra.modelserver.fetch import fetch_input
from infra.modelserver.media import U8, fit_max_side, load_image, save_png
from infra.photo_rules import Box

DETECT_MAX_SIDE = 640  # Haar works well from here down to ~256 px; larger is just slower

_local = threading.local()


class AnalyzeInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    image_url: str = Field(pattern=URL_PATTERN)
    size: int = SIZE_FIELD


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


def detect_faces(rgb: U8) -> list[Box]:
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
        Box(round(x / scale), round(y / scale), round(fw / scale), round(fh / scale))
        for (x, y, fw, fh) in (tuple(int(v) for v in f) for f in found)
    ]
    return sorted(faces, key=lambda r: r.w * r.h, reverse=True)


def run(inputs: AnalyzeInput, work_dir: Path, log: LogFn) -> dict[str, Any]:
    loaded = load_image(fetch_input(inputs.image_url, work_dir))
    log(f"decoded {loaded.original_width}x{loaded.original_height}, rotated {loaded.rotation}")
    rgb = fit_max_side(loaded.rgb, inputs.size)
    faces = detect_faces(rgb)
    log(f"found {len(faces)} face(s)")
    out = save_png(rgb, work_dir / "analyzed.png")
    height, width = rgb.shape[:2]
    return {
        "image": OutputFile(out, "image/png", width=width, height=height),
        "rotation_applied": loaded.rotation,
        "original_width": loaded.original_width,
        "original_height": loaded.original_height,
        "faces": [f.as_dict() for f in faces],
    }


SPEC = AppSpec(AnalyzeInput, run, "Upright + resize a photo; find its faces")
