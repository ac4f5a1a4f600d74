"""The model functions called directly (no server): quality and edge cases."""

from __future__ import annotations

import base64
import io
import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from infra.modelserver.apps.analyze import detect_faces
from infra.modelserver.apps.animate import animate_layers, frame_count, parse_motion
from infra.modelserver.apps.base import InputDownloadError
from infra.modelserver.apps.cartoonify import cartoonify, expand_to_full_body, parse_style
from infra.modelserver.apps.segment_image import segment_person
from infra.modelserver.apps.segment_video import (
    estimate_background,
    foreground_mask,
    sample_frames,
)
from infra.modelserver.fetch import fetch_input
from infra.modelserver.media import (
    VideoWriter,
    fit_max_side,
    iter_video_frames,
    probe_video,
)
from infra.photo_rules import Box, implied_figure, judge
from tests.infra.modelserver.ms_helpers import FPS, SIZE
from tests.support.photos import photo


@pytest.fixture(scope="module")
def character() -> tuple[np.ndarray, np.ndarray]:
    """The astronaut as a full-body cartoon and its mask, as the pipeline makes them."""
    rgb = np.asarray(Image.open(io.BytesIO(photo("astronaut.png"))).convert("RGB"))
    rgb = fit_max_side(rgb, SIZE)
    face = detect_faces(rgb)[0]
    grown, face = expand_to_full_body(rgb, face)
    scale = SIZE / max(grown.shape[:2])
    cartoon = cartoonify(fit_max_side(grown, SIZE), "hero")
    face = Box(*(round(v * scale) for v in (face.x, face.y, face.w, face.h)))
    return cartoon, segment_person(cartoon, face)


@pytest.mark.parametrize("prompt", ["", "dance", "jump", "calm"])
def test_segment_video_recovers_the_animated_figure(
    character: tuple[np.ndarray, np.ndarray], prompt: str, tmp_path: Path
) -> None:
    cartoon, mask = character
    layers = list(animate_layers(cartoon, mask, prompt, FPS, 5.0))
    height, width = layers[0][0].shape[:2]
    video = tmp_path / "clip.mp4"
    with VideoWriter(video, width, height, FPS) as writer:
        for frame, _ in layers:
            writer.write(frame)
    info = probe_video(video)
    assert (info.width, info.height, info.fps) == (width, height, FPS)
    background = estimate_background(sample_frames(video, info))
    ious = []
    for frame, (_, alpha) in zip(iter_video_frames(video, info), layers, strict=True):
        found, truth = foreground_mask(frame, background) > 127, alpha > 0.5
        ious.append((found & truth).sum() / (found | truth).sum())
    assert np.mean(ious) > 0.7 and min(ious) > 0.6, (prompt, np.mean(ious), min(ious))


def test_segment_image_mask_covers_the_drawn_legs(
    character: tuple[np.ndarray, np.ndarray],
) -> None:
    _, mask = character
    lower = mask[int(mask.shape[0] * 0.75) : int(mask.shape[0] * 0.85)]
    assert (lower > 0).mean() > 0.15  # the generated legs belong to the figure


def test_animation_loops_and_keeps_the_frame_count() -> None:
    assert frame_count(24, 5.0) == 120 and frame_count(12, 2.5) == 30 and frame_count(1, 0.1) == 1
    rgb = np.full((64, 48, 3), 200, np.uint8)
    mask = np.zeros((64, 48), np.uint8)
    mask[20:60, 14:34] = 255
    rgb[mask > 0] = (200, 40, 40)
    frames = [f.astype(np.int16) for f, _ in animate_layers(rgb, mask, "", 12, 2.0)]
    assert len(frames) == 24
    steps = [np.abs(b - a).mean() for a, b in itertools.pairwise(frames)]
    wrap = np.abs(frames[0] - frames[-1]).mean()
    assert max(steps) > 0  # it moves...
    assert wrap <= max(steps) * 1.5  # ...and the last frame leads smoothly into the first


def test_prompt_words_pick_style_and_motion() -> None:
    assert parse_style("a knight in RED armour").tint == (220.0, 40.0, 40.0)
    assert parse_style("plain").tint is None
    assert parse_style("bold").edge_width > parse_style("sketch").edge_width
    assert parse_motion("dance party").sway_degrees > parse_motion("calm").sway_degrees


def test_figure_estimate_and_clipping() -> None:
    figure = implied_figure(Box(100, 50, 40, 40))
    assert figure == Box(60, 30, 120, 300)
    verdict = judge(
        width=200,
        height=200,
        original_short_side=200,
        grey_mean=128,
        grey_std=40,
        faces=[Box(100, 50, 40, 40)],
    )
    assert verdict.figure == Box(60, 30, 120, 170)  # clipped to the picture
    assert verdict.full_body is False
    outside = judge(
        width=200,
        height=200,
        original_short_side=200,
        grey_mean=128,
        grey_std=40,
        faces=[Box(300, 300, 10, 10)],
    )
    assert outside.figure is None


def test_fetch_refuses_oversized_and_unknown_inputs(tmp_path: Path) -> None:
    big = "data:application/octet-stream;base64," + base64.b64encode(b"x" * 2048).decode()
    with pytest.raises(InputDownloadError):
        fetch_input(big, tmp_path, max_bytes=1024)
    with pytest.raises(InputDownloadError):
        fetch_input("file:///etc/passwd", tmp_path)
    path = fetch_input("data:text/plain,hello%20there", tmp_path)
    assert path.read_bytes() == b"hello there"


def test_video_writer_needs_even_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        VideoWriter(tmp_path / "x.mp4", 31, 32, 12)
