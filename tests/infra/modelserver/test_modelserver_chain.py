"""The whole pipeline, model by model, as the workflow runs it."""

from __future__ import annotations

import time

import fal_client
import numpy as np

from activities.providers.local import APPS
from tests.infra.modelserver.ms_helpers import FPS, SIZE, decode, judged, run
from workflows import contract

DURATION = 5.0


async def test_photo_to_animated_character_chain(
    fal: fal_client.AsyncClient, astronaut_uri: str
) -> None:
    started = time.monotonic()
    nsfw = await run(fal, APPS[contract.NSFW_FILTER.name], {"image_url": astronaut_uri})
    assert nsfw["nsfw_probability"] < 0.2
    analysis = await judged(
        await run(fal, APPS[contract.ANALYZE.name], {"image_url": astronaut_uri, "size": SIZE})
    )
    assert analysis["usable"]
    cartoon = await run(
        fal,
        APPS[contract.CARTOONIFY.name],
        {
            "image_url": analysis["image"]["url"],
            "prompt": "a cheerful hero in gold",
            "size": SIZE,
            "expand_to_full_body": not analysis["full_body"],
            "face": analysis["faces"][0],
        },
    )
    mask = await run(
        fal,
        APPS[contract.SEGMENT_IMAGE.name],
        {"image_url": cartoon["image"]["url"], "size": SIZE, "face": cartoon["face"]},
    )
    animation = await run(
        fal,
        APPS[contract.ANIMATE.name],
        {
            "image_url": cartoon["image"]["url"],
            "mask_url": mask["mask"]["url"],
            "prompt": "dance",
            "fps": FPS,
            "duration_seconds": DURATION,
        },
    )
    matte = await run(
        fal, APPS[contract.SEGMENT_VIDEO.name], {"video_url": animation["video"]["url"], "fps": FPS}
    )
    elapsed = time.monotonic() - started
    print(f"chain at {SIZE}px, {FPS} fps, {DURATION} s: {elapsed:.2f} s")

    frames, _ = await decode(animation["video"]["url"])
    masks, meta = await decode(matte["mask_video"]["url"])
    expected = round(FPS * DURATION)
    assert len(frames) == len(masks) == expected
    assert masks[0].shape == frames[0].shape
    assert meta["codec"] == "h264"
    gray = np.stack(masks)
    assert np.abs(gray[..., 0].astype(int) - gray[..., 2].astype(int)).max() <= 8  # gray content
    fractions = (gray[..., 0] > 127).mean(axis=(1, 2))
    assert fractions.min() > 0.05 and fractions.max() < 0.8, fractions
    assert elapsed < 30  # a few seconds on two cores; generous for loaded CI machines
