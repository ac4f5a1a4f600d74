"""Where each kind of file lives in storage: the one place that knows the key layout.

- ``generations/<generation id>/``: a generation's working files (the uploaded photo,
  every step's intermediate result). Deleted once the generation has ended and the
  retention setting has passed (activities/housekeeping.py).
- ``characters/<character id>/``: a finished character's assets. Kept.
"""

from __future__ import annotations

from uuid import UUID

# Every finished character's assets are under this prefix (infra/storage/cdn.py links only
# these through a CDN).
CHARACTERS = "characters/"


def working_files(generation_id: UUID | str) -> str:
    return f"generations/{generation_id}/"


def input_photo(generation_id: UUID | str, extension: str) -> str:
    return f"{working_files(generation_id)}input/photo.{extension}"


def step_output(generation_id: UUID | str, step: str, name: str) -> str:
    """``name`` includes its extension."""
    return f"{working_files(generation_id)}{step}/{name}"


def picture(generation_id: UUID | str, name: str) -> str:
    """A picture shown while the generation runs (workflows/contract.py PICTURES)."""
    return f"{working_files(generation_id)}pictures/{name}.png"


def character_assets(character_id: UUID | str) -> str:
    return f"{CHARACTERS}{character_id}/"
