"""The pictures a person sees while their BitBuddy is made (workflows/contract.py
PICTURES): a step's image, or its mask over its input image (the cut-out), as a PNG no
larger than PICTURE_SIDE a side, so the progress page shows it at once."""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps

from workflows.contract import PICTURE_SIDE


def render(image: Path | BinaryIO, mask: Path | None = None) -> bytes:
    """The picture as PNG bytes: ``image`` upright and shrunk; with ``mask``, the mask is
    its alpha (white keeps, black cuts), so the cut-out shows on any background."""
    with Image.open(image) as opened:
        picture = ImageOps.exif_transpose(opened).convert("RGBA" if mask else "RGB")
    if mask is not None:
        with Image.open(mask) as opened_mask:
            alpha = opened_mask.convert("L").resize(picture.size)
        picture.putalpha(alpha)
    picture.thumbnail((PICTURE_SIDE, PICTURE_SIDE))
    out = io.BytesIO()
    picture.save(out, format="PNG", optimize=False, compress_level=3)
    return out.getvalue()
