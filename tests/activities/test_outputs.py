"""Each step's output is checked before the next step uses it (activities/outputs.py),
on real files: pictures made with Pillow, videos encoded by the ffmpeg the worker runs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import imageio_ffmpeg
import pytest
from PIL import Image

from activities import outputs
from workflows import contract


def _png(path: Path, size: tuple[int, int], mode: str = "RGB", colour: int = 128) -> Path:
    Image.new(mode, size, colour).save(path, format="PNG")
    return path


def _video(path: Path, frames: int) -> Path:
    subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            f"testsrc=size=64x64:rate=12:duration={frames / 12}",
            "-pix_fmt",
            "yuv420p",
            str(path),
        ],
        check=True,
    )
    return path


async def test_an_image_that_decodes_passes_with_its_size(tmp_path: Path) -> None:
    facts = await outputs.check(contract.IMAGE, _png(tmp_path / "a.png", (40, 30)), image_size=None)
    assert facts == {"width": 40, "height": 30}


async def test_noise_or_a_truncated_image_is_refused(tmp_path: Path) -> None:
    noise = tmp_path / "noise.png"
    noise.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    with pytest.raises(outputs.OutputInvalid, match="does not decode"):
        await outputs.check(contract.IMAGE, noise, image_size=None)
    whole = _png(tmp_path / "whole.png", (64, 64)).read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(outputs.OutputInvalid):
        await outputs.check(contract.IMAGE, truncated, image_size=None)


async def test_a_mask_must_keep_something_and_have_its_images_size(tmp_path: Path) -> None:
    empty = _png(tmp_path / "empty.png", (32, 32), mode="L", colour=0)
    with pytest.raises(outputs.OutputInvalid, match="empty"):
        await outputs.check(contract.MASK, empty, image_size=(32, 32))
    clear = _png(tmp_path / "clear.png", (32, 32), mode="RGBA", colour=0)
    with pytest.raises(outputs.OutputInvalid, match="empty"):
        await outputs.check(contract.MASK, clear, image_size=(32, 32))
    mask = tmp_path / "mask.png"
    image = Image.new("L", (32, 32), 0)
    image.paste(255, (8, 8, 24, 24))
    image.save(mask)
    with pytest.raises(outputs.OutputInvalid, match="32x32, its image 64x64"):
        await outputs.check(contract.MASK, mask, image_size=(64, 64))
    assert await outputs.check(contract.MASK, mask, image_size=(32, 32)) == {
        "width": 32,
        "height": 32,
    }


async def test_a_video_must_read_and_have_frames(tmp_path: Path) -> None:
    video = _video(tmp_path / "v.mp4", frames=6)
    assert await outputs.check(contract.VIDEO, video, image_size=None) == {"frames": 6}
    assert await outputs.check(contract.MASK_VIDEO, video, image_size=None) == {"frames": 6}
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(outputs.OutputInvalid, match="does not read"):
        await outputs.check(contract.VIDEO, noise, image_size=None)
    still = _png(tmp_path / "still.png", (16, 16))  # ffmpeg reads it as a 1-frame video
    with pytest.raises(outputs.OutputInvalid, match="not an animation"):
        await outputs.check(contract.VIDEO, still, image_size=None)


async def test_the_analysis_verdict_is_ours_from_the_faces_found(tmp_path: Path) -> None:
    picture = tmp_path / "analyzed.png"
    Image.effect_noise((256, 256), 60).convert("RGB").save(picture)  # mid-grey, varied
    face = {"x": 100, "y": 20, "w": 50, "h": 50}  # its body runs past the bottom
    judged = await outputs.judge_analysis(
        picture, {"faces": [face], "original_width": 1024, "original_height": 1024}
    )
    assert (judged["usable"], judged["problems"], judged["full_body"]) == (True, [], False)
    assert judged["figure"] == {"x": 50, "y": 0, "w": 150, "h": 256}  # clipped at the edges
    small_face = {"x": 120, "y": 10, "w": 20, "h": 20}  # 7 faces tall fits in 256 px
    judged = await outputs.judge_analysis(picture, {"faces": [small_face]})
    assert judged["full_body"] is True
    judged = await outputs.judge_analysis(picture, {"faces": []})
    assert judged["usable"] is False and "No face" in judged["problems"][0]
    dark = _png(tmp_path / "dark.png", (256, 256), colour=10)
    judged = await outputs.judge_analysis(dark, {"faces": [face], "original_width": 100})
    assert judged["usable"] is False
    assert any("uniform" in p for p in judged["problems"])
    assert any("too dark" in p for p in judged["problems"])
