"""``bitbuddies/cartoonify``: a photo becomes a flat-shaded, ink-outlined cartoon.

The look is the classic recipe: bilateral smoothing (flattens texture, keeps edges),
k-means colour quantisation (a small palette, like cel shading) and adaptive-threshold
ink lines. The prompt steers it deterministically through keywords: colour words tint
the palette, style words change line weight, palette size and saturation. k-means is
seeded with labels from brightness ranks instead of random centres, so the same inputs
always give the same bytes, whatever thread runs them.

``expand_to_full_body`` serves half-body photos: the canvas grows below (and beside)
the person until the whole estimated figure fits, a simple body in the sampled
clothing colours is drawn into the new area, and the seam is inpainted before the
cartoon pass unifies everything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from infra.modelserver.apps.base import (
    SIZE_FIELD,
    URL_PATTERN,
    AppSpec,
    Box,
    LogFn,
    OutputFile,
)
from infra.modelserver.fetch import fetch_input
from infra.modelserver.media import F32, U8, fit_max_side, load_image, save_png
from infra.photo_rules import Box as Rect
from infra.photo_rules import implied_figure

KMEANS_SAMPLE_SIDE = 128
INK = np.array([28, 24, 36], dtype=np.float32)
FLOOR_GREY = np.array([205, 200, 195], dtype=np.float32)

COLOUR_WORDS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "blue": (40, 90, 225),
    "green": (40, 170, 70),
    "gold": (235, 180, 40),
    "golden": (235, 180, 40),
    "yellow": (240, 215, 40),
    "orange": (245, 140, 30),
    "pink": (245, 120, 185),
    "purple": (140, 60, 205),
    "violet": (140, 60, 205),
    "teal": (30, 160, 160),
    "cyan": (40, 200, 220),
}


class CartoonifyInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    image_url: str = Field(pattern=URL_PATTERN)
    prompt: str = Field("", max_length=2000)
    size: int = SIZE_FIELD
    expand_to_full_body: bool = False
    face: Box | None = Field(None, description="Face box in the input image's pixels")


@dataclass(frozen=True)
class Style:
    """What the prompt asks for, reduced to a few numbers."""

    tint: tuple[float, float, float] | None = None
    tint_strength: float = 0.35
    colours: int = 8
    saturation: float = 1.0
    brightness: float = 1.0
    edge_block: int = 9
    edge_c: float = 4.0
    edge_width: int = 1
    smoothing_passes: int = 3


def parse_style(prompt: str) -> Style:
    """Keywords only, so the same prompt always gives the same look; unknown words are
    ignored. Several colour words blend their tints."""
    words = set(re.findall(r"[a-z]+", prompt.lower()))
    tints = [COLOUR_WORDS[w] for w in sorted(words) if w in COLOUR_WORDS]
    tint = tuple(float(np.mean([t[i] for t in tints])) for i in range(3)) if tints else None
    colours, saturation, brightness = 8, 1.0, 1.0
    edge_block, edge_c, edge_width, passes = 9, 4.0, 1, 3
    if words & {"sketch", "pencil", "drawing"}:
        edge_block, edge_c, edge_width, saturation, brightness = 7, 2.5, 1, 0.55, 1.12
    if words & {"bold", "comic", "thick"}:
        edge_block, edge_c, edge_width, saturation = 11, 5.0, 3, 1.25
    if words & {"vivid", "colorful", "colourful", "bright", "vibrant"}:
        saturation *= 1.35
    if words & {"pastel", "soft"}:
        saturation, brightness = saturation * 0.7, brightness * 1.12
    if words & {"dark", "night", "noir", "moody"}:
        brightness *= 0.75
    if words & {"simple", "flat", "minimal"}:
        colours, passes = 5, 4
    if words & {"detailed", "intricate"}:
        colours, passes = 12, 2
    return Style(
        tint=(tint[0], tint[1], tint[2]) if tint else None,
        colours=colours,
        saturation=saturation,
        brightness=brightness,
        edge_block=edge_block,
        edge_c=edge_c,
        edge_width=edge_width,
        smoothing_passes=passes,
    )


def _luma(rgb: F32) -> F32:
    return np.asarray(rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32), dtype=np.float32)


def _palette(smooth: U8, k: int) -> F32:
    """k colour centres from a small copy; deterministic (brightness-rank initial labels)."""
    small = fit_max_side(smooth, min(KMEANS_SAMPLE_SIDE, max(smooth.shape[:2])))
    samples = small.reshape(-1, 3).astype(np.float32)
    k = max(1, min(k, len(samples)))
    order = np.argsort(_luma(samples), kind="stable")
    labels = np.empty(len(samples), dtype=np.int32)
    labels[order] = (np.arange(len(samples)) * k // len(samples)).astype(np.int32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_MAX_ITER, 20, 0.5)
    _, _, centers = cv2.kmeans(
        samples, k, labels.reshape(-1, 1), criteria, 1, cv2.KMEANS_USE_INITIAL_LABELS
    )
    return np.asarray(centers, dtype=np.float32)


def _style_palette(centers: F32, style: Style) -> F32:
    out = centers.copy()
    if style.tint is not None:
        tint = np.array(style.tint, dtype=np.float32)
        scale = _luma(out)[:, None] / max(float(_luma(tint[None])[0]), 1.0)
        tinted = np.clip(tint * scale, 0, 255) * style.tint_strength
        out = (out * (1 - style.tint_strength) + tinted).astype(np.float32)
    grey = _luma(out)[:, None]
    out = grey + (out - grey) * style.saturation
    out = out * style.brightness
    return np.clip(out, 0, 255).astype(np.float32)


def _nearest(pixels: F32, centers: F32) -> np.ndarray[Any, np.dtype[np.intp]]:
    # |p - c|^2 = |p|^2 - 2 p.c + |c|^2; |p|^2 is the same for every c.
    scores = pixels @ centers.T * -2.0 + (centers**2).sum(axis=1)[None, :]
    return np.asarray(np.argmin(scores, axis=1))


def _ink_lines(rgb: U8, style: Style) -> F32:
    """1.0 where there is no line, 0.0 on a line."""
    gray = cv2.medianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), 5)
    block = style.edge_block + (1 - style.edge_block % 2)
    edges = cv2.adaptiveThreshold(
        gray, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, block, style.edge_c
    )
    if style.edge_width > 1:
        kernel = np.ones((style.edge_width, style.edge_width), np.uint8)
        edges = cv2.erode(edges, kernel)
    return np.asarray(edges, dtype=np.float32) / 255.0


def cartoonify(rgb: U8, prompt: str = "") -> U8:
    """The cartoon version of ``rgb`` (same size); pure and deterministic."""
    style = parse_style(prompt)
    smooth = rgb
    for _ in range(style.smoothing_passes):
        smooth = np.asarray(cv2.bilateralFilter(smooth, 7, 40, 7), dtype=np.uint8)
    centers = _palette(smooth, style.colours)
    styled = _style_palette(centers, style)
    labels = _nearest(smooth.reshape(-1, 3).astype(np.float32), centers)
    flat = styled[labels].reshape(rgb.shape)
    lines = _ink_lines(rgb, style)[..., None]
    out = flat * lines + INK * (1 - lines)
    return np.asarray(np.clip(out + 0.5, 0, 255), dtype=np.uint8)


# --- full-body extension ---------------------------------------------------------------


def _median_colour(rgb: U8, x0: float, y0: float, x1: float, y1: float) -> F32 | None:
    h, w = rgb.shape[:2]
    xa, ya = max(0, int(x0)), max(0, int(y0))
    xb, yb = min(w, int(x1)), min(h, int(y1))
    if xb - xa < 2 or yb - ya < 2:
        return None
    return np.asarray(np.median(rgb[ya:yb, xa:xb].reshape(-1, 3), axis=0), dtype=np.float32)


def _shade(colour: F32, factor: float) -> tuple[int, int, int]:
    c = np.clip(colour * factor, 0, 255)
    return int(c[0]), int(c[1]), int(c[2])


def expand_to_full_body(rgb: U8, face: Rect) -> tuple[U8, Rect]:
    """Grow the canvas so the figure under ``face`` fits and paint a body into it.

    Returns the new canvas and the face box in its coordinates. Images that already
    hold the whole figure come back unchanged.
    """
    h, w = rgb.shape[:2]
    fig = implied_figure(face)
    pad = round(face.h * 0.3)
    bottom = max(0, fig.y + fig.h + pad - h)
    left = max(0, -fig.x + pad // 2) if fig.x < 0 else 0
    right = max(0, fig.x + fig.w + pad // 2 - w) if fig.x + fig.w > w else 0
    if bottom == 0 and left == 0 and right == 0:
        return rgb, face

    canvas = np.asarray(
        cv2.copyMakeBorder(rgb, 0, bottom, left, right, cv2.BORDER_REPLICATE), dtype=np.uint8
    )
    new_area = np.ones(canvas.shape[:2], np.uint8)
    new_area[:h, left : left + w] = 0
    canvas = np.where(new_area[..., None] > 0, _backdrop(canvas, h), canvas).astype(np.uint8)

    clothing = _median_colour(
        rgb,
        face.x - face.w * 0.3,
        face.y + face.h * 1.5,
        face.x + face.w * 1.3,
        face.y + face.h * 2.3,
    )
    if clothing is None:
        clothing = np.array([70, 95, 150], np.float32)
    skin = _median_colour(
        rgb,
        face.x + face.w * 0.3,
        face.y + face.h * 0.45,
        face.x + face.w * 0.7,
        face.y + face.h * 0.75,
    )
    if skin is None:
        skin = np.array([225, 180, 150], np.float32)
    trousers = clothing * 0.7  # a matching, darker outfit: reads as one figure

    floor_luma = float(_luma(canvas[-1].astype(np.float32)).mean())
    if abs(float(_luma(trousers[None])[0]) - floor_luma) < 60:
        trousers = trousers * (0.55 if floor_luma > 90 else 1.6)

    body = canvas.copy()
    _draw_body(body, Rect(face.x + left, face.y, face.w, face.h), clothing, skin, trousers)
    painted = np.any(body != canvas, axis=2) & (new_area > 0)
    canvas = np.where(new_area[..., None] > 0, body, canvas).astype(np.uint8)

    seam = np.zeros(canvas.shape[:2], np.uint8)
    band = max(2, round(face.h * 0.06))
    if bottom:
        seam[max(0, h - band) : h + band, :] = 255
    if left:
        seam[:h, max(0, left - band) : left + band] = 255
    if right:
        seam[:h, left + w - band : left + w + band] = 255
    seam[painted] = 0  # the body meets the photo edge-on, like a hem; only blend scenery
    canvas = np.asarray(cv2.inpaint(canvas, seam, band + 2, cv2.INPAINT_TELEA), dtype=np.uint8)
    return canvas, Rect(face.x + left, face.y, face.w, face.h)


def _backdrop(canvas: U8, seam_y: int) -> U8:
    """A soft floor below ``seam_y``: the last image row, blurred wide, fading darker.

    Above the seam (side extensions) the replicated edge columns are just blurred.
    """
    height, width = canvas.shape[:2]
    k = max(3, (width // 3) | 1)
    out = cv2.blur(canvas, (k, max(3, (seam_y // 4) | 1)))
    row = cv2.blur(
        canvas[max(0, seam_y - 6) : seam_y].astype(np.float32).mean(axis=0)[None], (k, 1)
    )
    floor = row.mean(axis=1, keepdims=True) * 0.25 + FLOOR_GREY * 0.75
    depth = height - seam_y
    if depth > 0:
        t = np.clip(np.arange(depth, dtype=np.float32) / max(1.0, depth * 0.3), 0, 1)[:, None, None]
        out[seam_y:] = np.clip(row * (1 - t) + floor * t, 0, 255).astype(np.uint8)
    return np.asarray(out, dtype=np.uint8)


def _draw_body(img: U8, face: Rect, clothing: F32, skin: F32, trousers: F32) -> None:
    """A simple standing figure scaled from the face: torso, arms, legs, shoes."""
    fw, fh = face.w, face.h
    cx = face.x + fw / 2
    shoulder_y = face.y + fh * 1.25
    hip_y = face.y + fh * 4.0
    feet_y = face.y + fh * 6.8

    def pt(x: float, y: float) -> tuple[int, int]:
        return round(x), round(y)

    shirt, shirt_dark = _shade(clothing, 1.0), _shade(clothing, 0.8)
    legs, shoe = _shade(trousers, 1.0), (35, 30, 30)
    neck = _shade(skin, 0.92)
    cv2.rectangle(
        img, pt(cx - fw * 0.18, face.y + fh * 0.9), pt(cx + fw * 0.18, shoulder_y), neck, -1
    )
    torso = np.array(
        [
            pt(cx - fw * 1.15, shoulder_y + fh * 0.15),
            pt(cx + fw * 1.15, shoulder_y + fh * 0.15),
            pt(cx + fw * 0.85, hip_y),
            pt(cx - fw * 0.85, hip_y),
        ],
        np.int32,
    )
    arm = max(2, round(fw * 0.42))
    for side in (-1, 1):
        shoulder = pt(cx + side * fw * 0.95, shoulder_y + fh * 0.35)
        hand = pt(cx + side * fw * 1.2, hip_y + fh * 0.2)
        cv2.line(img, shoulder, hand, shirt_dark, arm, cv2.LINE_AA)
        cv2.circle(img, hand, round(arm * 0.6), _shade(skin, 1.0), -1, cv2.LINE_AA)
        cv2.ellipse(img, shoulder, (round(fw * 0.35), round(fh * 0.3)), 0, 0, 360, shirt, -1)
        leg_x = cx + side * fw * 0.44
        cv2.rectangle(
            img, pt(leg_x - fw * 0.4, hip_y - fh * 0.1), pt(leg_x + fw * 0.4, feet_y), legs, -1
        )
        cv2.ellipse(
            img,
            pt(leg_x + side * fw * 0.1, feet_y),
            (round(fw * 0.48), round(fh * 0.22)),
            0,
            0,
            360,
            shoe,
            -1,
        )
    cv2.fillConvexPoly(img, torso, shirt, cv2.LINE_AA)
    cv2.ellipse(
        img,
        pt(cx, shoulder_y + fh * 0.2),
        (round(fw * 1.1), round(fh * 0.35)),
        0,
        180,
        360,
        shirt,
        -1,
    )
    belt_y = round(hip_y - fh * 0.15)
    cv2.rectangle(
        img, pt(cx - fw * 0.85, belt_y), pt(cx + fw * 0.85, hip_y + 1), _shade(trousers, 0.6), -1
    )


def run(inputs: CartoonifyInput, work_dir: Path, log: LogFn) -> dict[str, Any]:
    loaded = load_image(fetch_input(inputs.image_url, work_dir))
    rgb = fit_max_side(loaded.rgb, inputs.size)
    scale = rgb.shape[1] / loaded.original_width
    face = None
    if inputs.face is not None:
        f = inputs.face
        face = Rect(
            round(f.x * scale),
            round(f.y * scale),
            max(1, round(f.w * scale)),
            max(1, round(f.h * scale)),
        )
    expanded = False
    if inputs.expand_to_full_body and face is not None:
        grown, face = expand_to_full_body(rgb, face)
        expanded = grown is not rgb
        if expanded:
            (h0, w0), (h1, w1) = rgb.shape[:2], grown.shape[:2]
            log(f"extended canvas {w0}x{h0} -> {w1}x{h1}")
            factor = inputs.size / max(grown.shape[:2])
            rgb = fit_max_side(grown, inputs.size)
            face = Rect(
                round(face.x * factor),
                round(face.y * factor),
                max(1, round(face.w * factor)),
                max(1, round(face.h * factor)),
            )
    elif inputs.expand_to_full_body:
        log("expand_to_full_body ignored: no face box given")
    style = parse_style(inputs.prompt)
    log(f"cartoonify {rgb.shape[1]}x{rgb.shape[0]}, {style.colours} colours, tint={style.tint}")
    out = cartoonify(rgb, inputs.prompt)
    path = save_png(out, work_dir / "cartoon.png")
    height, width = out.shape[:2]
    return {
        "image": OutputFile(path, "image/png", width=width, height=height),
        "expanded": expanded,
        "face": face.as_dict() if face else None,
    }


SPEC = AppSpec(CartoonifyInput, run, "Photo -> flat cartoon, optionally extended to a full body")
