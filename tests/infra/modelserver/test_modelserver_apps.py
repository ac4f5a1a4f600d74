"""Each app, end to end through fal_client, on real photos."""

from __future__ import annotations

import io
from typing import Any

import fal_client
import numpy as np
from PIL import Image

from activities.providers.local import APPS
from tests.infra.modelserver.ms_helpers import FPS, SIZE, data_uri, decode, download, judged, run
from tests.support.paths import FIXTURES
from tests.support.photos import photo
from workflows import contract

NSFW = APPS[contract.NSFW_FILTER.name]
ANALYZE = APPS[contract.ANALYZE.name]
CARTOONIFY = APPS[contract.CARTOONIFY.name]
SEGMENT_IMAGE = APPS[contract.SEGMENT_IMAGE.name]
ANIMATE = APPS[contract.ANIMATE.name]


async def fetch_image(file: dict[str, Any]) -> Image.Image:
    response = await download(file["url"])
    assert response.headers["content-type"] == file["content_type"]
    assert len(response.content) == file["file_size"]
    image = Image.open(io.BytesIO(response.content))
    image.load()
    assert image.size == (file["width"], file["height"])
    return image


def jpeg_with_orientation(png: bytes, orientation: int) -> bytes:
    """The photo stored sideways with an EXIF tag saying how to turn it upright."""
    image = Image.open(io.BytesIO(png)).convert("RGB").transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif, quality=92)
    return out.getvalue()


async def test_nsfw_scores_the_probe_high_and_the_astronaut_low(
    fal: fal_client.AsyncClient, astronaut_uri: str
) -> None:
    probe = data_uri((FIXTURES / "nsfw_probe.png").read_bytes())
    flagged = await run(fal, NSFW, {"image_url": probe})
    clean = await run(fal, NSFW, {"image_url": astronaut_uri})
    assert flagged["nsfw_probability"] >= 0.8
    assert clean["nsfw_probability"] < 0.2


async def test_analyze_finds_the_astronaut_and_her_body(
    fal: fal_client.AsyncClient, astronaut_uri: str
) -> None:
    result = await judged(await run(fal, ANALYZE, {"image_url": astronaut_uri, "size": SIZE}))
    assert result["usable"] is True and result["problems"] == []
    assert result["rotation_applied"] == 0
    image = await fetch_image(result["image"])
    assert image.mode == "RGB" and max(image.size) == SIZE
    face = result["faces"][0]
    # The face is in the upper middle of the portrait, about a fifth of its width.
    assert 0.25 < (face["x"] + face["w"] / 2) / SIZE < 0.6
    assert face["y"] < SIZE / 3 and 0.12 < face["w"] / SIZE < 0.35
    figure = result["figure"]
    assert figure["y"] + figure["h"] == SIZE  # clipped at the bottom...
    assert result["full_body"] is False  # ...so not a full body


async def test_analyze_applies_exif_orientation(fal: fal_client.AsyncClient) -> None:
    sideways = data_uri(jpeg_with_orientation(photo("astronaut.png"), 6), "image/jpeg")
    result = await run(fal, ANALYZE, {"image_url": sideways, "size": SIZE})
    assert result["rotation_applied"] == 90
    assert result["faces"], "the face is only found once the photo is upright"


async def test_analyze_says_a_coffee_cup_has_no_face(
    fal: fal_client.AsyncClient, coffee_uri: str
) -> None:
    result = await judged(await run(fal, ANALYZE, {"image_url": coffee_uri, "size": SIZE}))
    assert result["usable"] is False
    assert result["faces"] == [] and result["figure"] is None
    assert any("no face" in problem.lower() for problem in result["problems"])


async def test_analyze_flags_tiny_and_blank_images(fal: fal_client.AsyncClient) -> None:
    out = io.BytesIO()
    Image.new("RGB", (100, 80), (128, 128, 128)).save(out, format="PNG")
    found = await run(fal, ANALYZE, {"image_url": data_uri(out.getvalue()), "size": SIZE})
    result = await judged(found)
    problems = " ".join(result["problems"]).lower()
    assert result["usable"] is False
    assert "too small" in problems and "uniform" in problems
    image = await fetch_image(result["image"])
    assert image.size == (SIZE, round(SIZE * 0.8))


async def test_cartoonify_is_deterministic_and_follows_the_prompt(
    fal: fal_client.AsyncClient, astronaut_uri: str
) -> None:
    def args(prompt: str) -> dict[str, Any]:
        return {"image_url": astronaut_uri, "prompt": prompt, "size": SIZE}

    first = await run(fal, CARTOONIFY, args("a hero in red"))
    again = await run(fal, CARTOONIFY, args("a hero in red"))
    blue = await run(fal, CARTOONIFY, args("a hero in blue"))
    bold = await run(fal, CARTOONIFY, args("a bold comic hero"))
    same = [(await download(r["image"]["url"])).content for r in (first, again)]
    assert same[0] == same[1]
    red_img = np.asarray(await fetch_image(first["image"]), np.float32)
    blue_img = np.asarray(await fetch_image(blue["image"]), np.float32)
    assert red_img.shape == (SIZE, SIZE, 3)
    assert red_img[..., 0].mean() - red_img[..., 2].mean() > (
        blue_img[..., 0].mean() - blue_img[..., 2].mean() + 20
    )
    plain = np.asarray(await fetch_image((await run(fal, CARTOONIFY, args("a hero")))["image"]))
    bold_img = np.asarray(await fetch_image(bold["image"]))
    assert ink_share(bold_img) > ink_share(plain) * 1.3  # bold lines are heavier


def ink_share(img: np.ndarray[Any, Any]) -> float:
    return float((img.max(axis=2) < 50).mean())


async def test_cartoonify_extends_a_half_body_photo_to_a_full_figure(
    fal: fal_client.AsyncClient, astronaut_uri: str
) -> None:
    analysis = await run(fal, ANALYZE, {"image_url": astronaut_uri, "size": SIZE})
    result = await run(
        fal,
        CARTOONIFY,
        {
            "image_url": analysis["image"]["url"],
            "prompt": "",
            "size": SIZE,
            "expand_to_full_body": True,
            "face": analysis["faces"][0],
        },
    )
    assert result["expanded"] is True
    image = await fetch_image(result["image"])
    width, height = image.size
    assert height == SIZE and width < SIZE * 0.75  # a standing figure is tall
    face = result["face"]
    assert face["y"] + face["h"] * 7 <= height  # the whole body fits below the face


async def test_segment_image_cuts_out_the_person(
    fal: fal_client.AsyncClient, astronaut_uri: str
) -> None:
    analysis = await run(fal, ANALYZE, {"image_url": astronaut_uri, "size": SIZE})
    face = analysis["faces"][0]
    result = await run(
        fal,
        SEGMENT_IMAGE,
        {"image_url": analysis["image"]["url"], "size": SIZE, "face": face},
    )
    mask_image = await fetch_image(result["mask"])
    assert mask_image.mode == "L" and mask_image.size == (SIZE, SIZE)
    mask = np.asarray(mask_image)
    assert set(np.unique(mask)) <= {0, 255}
    assert 0.2 < (mask > 0).mean() < 0.6
    assert mask[face["y"] + face["h"] // 2, face["x"] + face["w"] // 2] == 255
    assert mask[5, 5] == 0 and mask[5, SIZE - 5] == 0
    # Without a face it still finds a central subject.
    blind = await run(fal, SEGMENT_IMAGE, {"image_url": analysis["image"]["url"]})
    assert 0.1 < (np.asarray(await fetch_image(blind["mask"])) > 0).mean() < 0.8


async def test_animate_renders_an_h264_clip_with_exactly_fps_times_duration_frames(
    fal: fal_client.AsyncClient, astronaut_uri: str
) -> None:
    analysis = await run(fal, ANALYZE, {"image_url": astronaut_uri, "size": SIZE})
    mask = await run(
        fal,
        SEGMENT_IMAGE,
        {"image_url": analysis["image"]["url"], "face": analysis["faces"][0]},
    )
    handle = await fal.submit(
        ANIMATE,
        {
            "image_url": analysis["image"]["url"],
            "mask_url": mask["mask"]["url"],
            "prompt": "happy jump",
            "fps": FPS,
            "duration_seconds": 2.5,
        },
    )
    result = await handle.get(interval=0.02)
    done = await handle.status(with_logs=True)
    assert isinstance(done, fal_client.Completed)
    logs = [line["message"] for line in done.logs or []]
    assert "frame 30/30" in logs
    video = result["video"]
    assert video["content_type"] == "video/mp4" and result["num_frames"] == 30
    frames, meta = await decode(video["url"])
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p")
    assert len(frames) == 30
    assert frames[0].shape == (video["height"], video["width"], 3)
    assert video["width"] % 2 == 0 and video["height"] % 2 == 0
    # The background corner stays still while the figure moves.
    corner = [f[:20, :20].astype(np.float32) for f in frames]
    assert max(float(np.abs(c - corner[0]).mean()) for c in corner) < 3
    middle = [
        f[SIZE // 3 : SIZE // 2, SIZE // 3 : 2 * SIZE // 3].astype(np.float32) for f in frames
    ]
    assert max(float(np.abs(m - middle[0]).mean()) for m in middle) > 5
