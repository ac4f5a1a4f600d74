"""``--mimic fal``: the server answers fal's endpoint ids of the default model map with
their documented arguments and result shapes, computed by our apps, through the
unmodified fal_client (as the fal adapter calls them)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import tempfile
from typing import Any

import fal_client
import httpx
import imageio_ffmpeg
import numpy as np
import pytest

from infra.modelserver import mimic
from tests.infra.modelserver.ms_helpers import add_fault, download, run, wait_for

LIFECYCLE = "X-Fal-Object-Lifecycle-Preference"
RAW_RGBA = ["-f", "rawvideo", "-pix_fmt", "rgba", "-"]


def _file(found: Any, content_type: str) -> dict[str, Any]:
    """A fal file object: url, content_type, file_name, file_size."""
    assert isinstance(found, dict), found
    assert found["url"].startswith("http") and found["content_type"] == content_type, found
    assert found["file_size"] > 0 and found["file_name"], found
    return found


def _alpha(data: bytes) -> np.ndarray[Any, Any]:
    """A WebM's alpha plane, every frame, decoded with libvpx (which keeps alpha)."""
    with tempfile.NamedTemporaryFile(suffix=".webm") as tmp:
        tmp.write(data)
        tmp.flush()
        exe = imageio_ffmpeg.get_ffmpeg_exe()
        out = subprocess.run(
            [exe, "-v", "error", "-c:v", "libvpx-vp9", "-i", tmp.name, *RAW_RGBA],
            capture_output=True,
            check=True,
        ).stdout
    return np.frombuffer(out, np.uint8).reshape(-1, 4)[:, 3]


async def test_the_default_maps_endpoints_answer_their_documented_shapes(
    fal: fal_client.AsyncClient, clean: httpx.AsyncClient, astronaut_uri: str
) -> None:
    nsfw = await run(fal, mimic.NSFW, {"image_url": astronaut_uri})
    assert set(nsfw) == {"nsfw_probability"} and 0 <= nsfw["nsfw_probability"] < 0.5

    kontext = await run(
        fal,
        mimic.KONTEXT,
        {"prompt": "a cartoon", "image_url": astronaut_uri, "output_format": "png"},
    )
    cartoon = _file(kontext["images"][0], "image/png")
    assert kontext["has_nsfw_concepts"] == [False] and isinstance(kontext["seed"], int)
    w, h = cartoon["width"], cartoon["height"]

    canvas = [w + 128, h * 2]
    bria = await run(
        fal,
        mimic.BRIA_EXPAND,
        {
            "image_url": cartoon["url"],
            "canvas_size": canvas,
            "original_image_size": [w, h],
            "original_image_location": [64, 0],
        },
    )
    expanded = _file(bria["image"], "image/png")
    assert [expanded["width"], expanded["height"]] == canvas
    # the original sits where it was asked, unchanged but for the cartoon pass
    assert len((await download(expanded["url"])).content) > 0

    birefnet = await run(fal, mimic.BIREFNET, {"image_url": expanded["url"], "output_mask": True})
    cutout, mask = _file(birefnet["image"], "image/png"), _file(birefnet["mask_image"], "image/png")
    assert (mask["width"], mask["height"]) == (cutout["width"], cutout["height"]) == tuple(canvas)

    kling = await run(
        fal,
        mimic.KLING,
        {"prompt": "waves", "image_url": expanded["url"], "duration": "5"},
    )
    assert set(kling) == {"video"}
    video = _file(kling["video"], "video/mp4")

    birefnet_video = await run(
        fal,
        mimic.BIREFNET_VIDEO,
        {"video_url": video["url"], "video_output_type": "VP9 (.webm)", "output_mask": True},
    )
    _file(birefnet_video["video"], "video/webm")
    _file(birefnet_video["mask_video"], "video/webm")

    veed = await run(fal, mimic.VEED, {"video_url": video["url"], "output_codec": "vp9"})
    assert set(veed) == {"video"}
    # ONE VP9 WebM whose alpha is the figure: transparent around it, opaque on it
    alpha = _alpha((await download(_file(veed["video"], "video/webm")["url"])).content)
    assert (alpha < 16).mean() > 0.2 and (alpha > 240).mean() > 0.05

    records = (await clean.get("/_local/requests")).json()
    assert [r["app"] for r in records] == [
        mimic.NSFW,
        mimic.KONTEXT,
        mimic.BRIA_EXPAND,
        mimic.BIREFNET,
        mimic.KLING,
        mimic.BIREFNET_VIDEO,
        mimic.VEED,
    ]


@pytest.mark.parametrize(
    ("app", "arguments", "locations"),
    [
        (mimic.KONTEXT, {"prompt": "x"}, {("body", "image_url")}),
        (mimic.KONTEXT, {"prompt": 3, "image_url": "https://f/x.png"}, {("body", "prompt")}),
        (mimic.BRIA_EXPAND, {"image_url": "https://f/x.png"}, {("body", "canvas_size")}),
        (
            mimic.KLING,
            {"prompt": "x", "image_url": "https://f/x.png", "duration": "7"},
            {("body", "duration")},
        ),
        (
            mimic.VEED,
            {"video_url": "https://f/v.mp4", "output_codec": "av1"},
            {("body", "output_codec")},
        ),
        (mimic.NSFW, {"image_url": ["https://f/x.png"]}, {("body", "image_url")}),
    ],
)
async def test_arguments_the_endpoint_would_refuse_get_fals_422(
    fal: fal_client.AsyncClient,
    clean: httpx.AsyncClient,
    app: str,
    arguments: dict[str, Any],
    locations: set[tuple[str, ...]],
) -> None:
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        await fal.submit(app, arguments)
    assert err.value.status_code == 422
    detail = err.value.response.json()["detail"]
    assert {tuple(item["loc"]) for item in detail} == locations
    assert all(set(item) == {"loc", "msg", "type"} for item in detail)
    assert (await clean.get("/_local/requests")).json() == []  # nothing ran


async def test_outputs_expire_as_the_lifecycle_header_asks_and_requests_record_it(
    fal: fal_client.AsyncClient, clean: httpx.AsyncClient, astronaut_uri: str
) -> None:
    arguments = {"prompt": "x", "image_url": astronaut_uri, "output_format": "png"}
    lifecycle = {"expiration_duration_seconds": 2}
    handle = await fal.submit(mimic.KONTEXT, arguments, headers={LIFECYCLE: json.dumps(lifecycle)})
    kept = await run(fal, mimic.KONTEXT, arguments)  # no header: kept
    expiring = (await handle.get())["images"][0]["url"]
    assert (await clean.get(expiring)).status_code == 200
    await asyncio.sleep(2.2)
    assert (await clean.get(expiring)).status_code == 404
    assert (await clean.get(kept["images"][0]["url"])).status_code == 200
    records = (await clean.get("/_local/requests")).json()
    assert [r["lifecycle"] for r in records] == [lifecycle, None]

    bad = {LIFECYCLE: json.dumps({"expiration_duration_seconds": "soon"})}
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        await fal.submit(mimic.KONTEXT, arguments, headers=bad)
    assert err.value.status_code == 422


async def test_a_fal_endpoints_requests_answer_under_its_owner_and_alias_with_faults(
    fal: fal_client.AsyncClient, clean: httpx.AsyncClient, astronaut_uri: str
) -> None:
    """fal_client finds a request of fal-ai/flux-pro/kontext under fal-ai/flux-pro, as
    fal's queue files it; the /_local faults take the endpoint id."""
    await add_fault(clean, mimic.KONTEXT, "delay", seconds=1.5)
    handle = await fal.submit(mimic.KONTEXT, {"prompt": "x", "image_url": astronaut_uri})
    assert handle.status_url.endswith(f"/fal-ai/flux-pro/requests/{handle.request_id}/status")
    await wait_for(handle, fal_client.InProgress)
    status = await fal.status(mimic.KONTEXT, handle.request_id, with_logs=True)
    assert isinstance(status, fal_client.InProgress)
    assert any("injected delay" in line["message"] for line in status.logs or [])
    result = await fal.result(mimic.KONTEXT, handle.request_id)
    assert result["images"][0]["content_type"] == "image/jpeg"  # fal's default format
    await add_fault(clean, mimic.KONTEXT, "error")
    failing = await fal.submit(mimic.KONTEXT, {"prompt": "x", "image_url": astronaut_uri})
    with pytest.raises(fal_client.FalClientHTTPError):
        await failing.get()
