"""The registry: app id -> ``AppSpec``. Adding an app is one module and one line here."""

from __future__ import annotations

from typing import Any

from infra.modelserver.apps import (
    analyze,
    animate,
    cartoonify,
    nsfw,
    segment_image,
    segment_video,
)
from infra.modelserver.apps.base import AppSpec

REGISTRY: dict[str, AppSpec[Any]] = {
    "bitbuddies/nsfw-filter": nsfw.SPEC,
    "bitbuddies/analyze": analyze.SPEC,
    "bitbuddies/cartoonify": cartoonify.SPEC,
    "bitbuddies/segment-image": segment_image.SPEC,
    "bitbuddies/animate": animate.SPEC,
    "bitbuddies/segment-video": segment_video.SPEC,
}

__all__ = ["REGISTRY"]
