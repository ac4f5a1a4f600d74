"""A photo becomes a character, end to end, through the public HTTP API."""

from __future__ import annotations

import io
import itertools
import uuid

import ffmpeg
import httpx
import imageio_ffmpeg
import numpy as np
from PIL import Image
from psycopg_pool import AsyncConnectionPool

from tests.conftest import Stack
from tests.support.client import signup
from tests.support.photos import photo
from tests.support.steps import step_names
from workflows.contract import TRANSCODE_STEP

# Every model step but expand (which runs only for a photo that is not full-body), in order.
PIPELINE = step_names(expand=False)


def _decode_webm_alpha(data: bytes) -> np.ndarray:
    """Frames as RGBA, decoded with libvpx: FFmpeg's native VP9 decoder drops alpha."""
    out, _ = (
        ffmpeg.input("pipe:", vcodec="libvpx-vp9")
        .output("pipe:", format="rawvideo", pix_fmt="rgba")
        .run(cmd=imageio_ffmpeg.get_ffmpeg_exe(), input=data, capture_stdout=True, quiet=True)
    )
    return np.frombuffer(out, np.uint8)


async def test_photo_becomes_an_animated_transparent_character(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    user = await signup(http)
    assert await user.balance() == 3

    response = await user.generate(photo("astronaut.png"))
    assert response.status_code == 202, response.text
    created = response.json()
    assert created["status"] == "queued"
    assert created["events_url"].endswith(f"/v1/generations/{created['id']}/events")
    assert await user.balance() == 2

    events = await user.events(created["id"])
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert events[-1].event == "completed", events[-1]
    assert all(e.event == "progress" for e in events[:-1])
    for event in events:
        assert {"step", "message", "percent"} <= event.data.keys()
    # each event says something new: no step is announced twice in a row
    assert all(a.data != b.data for a, b in itertools.pairwise(events))
    started = [e.data["step"] for e in events if e.event == "progress"]
    order = list(dict.fromkeys(started))
    assert [s for s in order if s in PIPELINE] == PIPELINE
    assert order[-1] == TRANSCODE_STEP
    percents = [e.data["percent"] for e in events]
    assert percents == sorted(percents) and percents[-1] == 100

    generation = await user.generation(created["id"])
    assert generation["status"] == "completed"
    character_id = events[-1].data["character_id"]
    assert generation["character_id"] == character_id
    assert await user.balance() == 2

    character = (await http.get(f"/v1/characters/{character_id}", headers=user.headers)).json()
    assets = character["assets"]
    webm = (await http.get(assets["webm"])).content
    rgba = _decode_webm_alpha(webm).reshape(-1, 4)
    alpha = rgba[:, 3]
    assert (alpha < 16).mean() > 0.05, "background must be transparent"
    assert (alpha > 240).mean() > 0.05, "the character must be opaque"

    webp = Image.open(io.BytesIO((await http.get(assets["webp"])).content))
    assert webp.format == "WEBP" and getattr(webp, "n_frames", 1) > 1
    png = Image.open(io.BytesIO((await http.get(assets["png"])).content))
    assert png.mode == "RGBA"
    assert np.asarray(png)[..., 3].min() == 0

    listed = (await http.get("/v1/characters", headers=user.headers)).json()["characters"]
    assert [c["id"] for c in listed] == [character_id]


async def test_a_late_or_reconnecting_client_gets_every_missed_event(
    stack: Stack,
    http: httpx.AsyncClient,
    db: AsyncConnectionPool,  # type: ignore[type-arg]
) -> None:
    user = await signup(http)
    created = (await user.generate(photo("astronaut.png"))).json()
    everything = await user.events(created["id"])
    assert everything[-1].event == "completed"

    for cut in (1, len(everything) // 2, len(everything) - 1):
        resumed = await user.events(created["id"], last_event_id=cut)
        assert resumed == everything[cut:]
    # after the terminal event there is nothing more, and the stream ends at once
    assert await user.events(created["id"], last_event_id=everything[-1].id) == []

    # A generation that ended before its log was kept in PostgreSQL has no events on
    # record: its outcome is rebuilt from the generation's row.
    async with db.connection() as conn:
        await conn.execute(
            "DELETE FROM generation_events WHERE generation_id = %s", (uuid.UUID(created["id"]),)
        )
    (rebuilt,) = await user.events(created["id"])
    assert (rebuilt.id, rebuilt.event) == (1, "completed")
    assert rebuilt.data["character_id"] == everything[-1].data["character_id"]
    (rebuilt,) = await user.events(created["id"], last_event_id=4)
    assert (rebuilt.id, rebuilt.event) == (5, "completed")
