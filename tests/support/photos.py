"""Sample photos: the public-domain ones shipped inside scikit-image's wheel (never
imported), e.g. ``astronaut.png`` (a portrait) and ``coffee.png`` (no face)."""

from __future__ import annotations

from importlib.resources import files


def photo(name: str) -> bytes:
    """The bytes of one of scikit-image's bundled test photos, by file name."""
    return (files("skimage") / "data" / name).read_bytes()
