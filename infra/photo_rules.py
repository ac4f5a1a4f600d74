"""What a usable photo is, in one place: the API refuses at upload what the pipeline's
analysis would refuse later (after charging a token), and the analysis step's verdict
(usable or not, why, full body or not) is made here, from the facts a model found (faces)
and the picture itself, whichever provider found them. Pure Python: no image library."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# The short side below which faces are too coarse to cartoonify.
MIN_SIDE = 128
# The largest output the pipeline renders (the model apps' ``size`` field allows up to
# 2048): the API stores uploads downscaled to this, so nothing bigger is kept or moved.
MAX_SIDE = 2048

# Brightness (0..255, of the grey picture) outside which nothing can be made out.
UNIFORM_STD = 10.0
TOO_DARK_MEAN = 35.0
TOO_BRIGHT_MEAN = 225.0

# People are about 7 face-heights tall (half a face of hair above) and 3 faces wide: the
# body a face implies, which says whether the photo shows all of it.
FIGURE_WIDTH_FACES = 3.0
FIGURE_ABOVE_FACES = 0.5
FIGURE_BELOW_FACES = 7.0


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    w: int
    h: int

    @classmethod
    def of(cls, found: dict[str, Any]) -> Box:
        return cls(int(found["x"]), int(found["y"]), int(found["w"]), int(found["h"]))

    def as_dict(self) -> dict[str, int]:
        return {"x": self.x, "y": self.y, "w": self.w, "h": self.h}


@dataclass(frozen=True)
class Verdict:
    usable: bool
    problems: list[str]
    full_body: bool
    figure: Box | None  # the body the largest face implies, within the picture

    def as_data(self) -> dict[str, Any]:
        return {
            "usable": self.usable,
            "problems": self.problems,
            "full_body": self.full_body,
            "figure": self.figure.as_dict() if self.figure else None,
        }


def judge(
    *,
    width: int,
    height: int,
    original_short_side: int,
    grey_mean: float,
    grey_std: float,
    faces: Sequence[Box],
) -> Verdict:
    """The verdict on an upright picture of ``width`` x ``height`` (the analysis step's
    output), with ``faces`` in its pixels, largest first."""
    problems = []
    if original_short_side < MIN_SIDE:
        problems.append(
            f"The image is too small ({original_short_side} px on its short side; "
            f"at least {MIN_SIDE} px needed)."
        )
    if grey_std < UNIFORM_STD:
        problems.append("The image is nearly uniform; there is nothing to work with.")
    if grey_mean < TOO_DARK_MEAN:
        problems.append("The image is too dark.")
    elif grey_mean > TOO_BRIGHT_MEAN:
        problems.append("The image is too bright (overexposed).")
    figure: Box | None = None
    full_body = False
    if faces:
        implied = implied_figure(faces[0])
        figure = _clip(implied, width, height)
        full_body = implied.y + implied.h <= height
    else:
        problems.append("No face or figure found; use a photo showing one person's face.")
    return Verdict(usable=not problems, problems=problems, full_body=full_body, figure=figure)


def implied_figure(face: Box) -> Box:
    """The body box implied by a face, unclipped (may extend past the picture)."""
    cx = face.x + face.w / 2
    width = face.w * FIGURE_WIDTH_FACES
    top = face.y - face.h * FIGURE_ABOVE_FACES
    bottom = face.y + face.h * FIGURE_BELOW_FACES
    return Box(round(cx - width / 2), round(top), round(width), round(bottom - top))


def _clip(box: Box, width: int, height: int) -> Box | None:
    x0, y0 = max(0, box.x), max(0, box.y)
    x1, y1 = min(width, box.x + box.w), min(height, box.y + box.h)
    if x1 <= x0 or y1 <= y0:
        return None
    return Box(x0, y0, x1 - x0, y1 - y0)
