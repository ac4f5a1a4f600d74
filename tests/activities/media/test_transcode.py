"""The transcode step against real ffmpeg, real files and a real GCS emulator."""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import numpy.typing as npt
import psutil
import pytest
from PIL import Image, WebPImagePlugin

from activities.media import CharacterFiles, TranscodeError, transcode_character
from infra.storage import CHUNK_SIZE, LocalStorage, Storage
from infra.storage.gcs import GCSStorage
from tests.activities.media.media_fixtures import FFMPEG, Animation, decode_rgba, make_animation

VIDEO_KEY = "generations/g1/output/video.mp4"
MASK_KEY = "generations/g1/output/mask.mp4"
PREFIX = "characters/c1/"


def local_storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store", public_url="http://test", signing_secret="s")


async def file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_SIZE):
            yield chunk


async def upload_inputs(storage: Storage, anim: Animation) -> None:
    await storage.write_stream(VIDEO_KEY, file_chunks(anim.video), content_type="video/mp4")
    await storage.write_stream(MASK_KEY, file_chunks(anim.mask), content_type="video/mp4")


async def download(storage: Storage, key: str, destination: Path) -> Path:
    with destination.open("wb") as handle:
        async for chunk in storage.read_stream(key):
            handle.write(chunk)
    return destination


def outputs_under(root: Path, prefix: str = PREFIX) -> list[Path]:
    folder = root / prefix
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def assert_disc_is_opaque_and_background_transparent(
    rgba: npt.NDArray[np.uint8], anim: Animation, frame: int, *, source_frame: int | None = None
) -> None:
    """Alpha ~255 inside the disc, ~0 everywhere well outside it (edges may be soft)."""
    cx, cy = anim.disc_centre(frame if source_frame is None else source_frame)
    ys, xs = np.mgrid[0 : anim.size, 0 : anim.size]
    distance = np.hypot(xs - cx, ys - cy)
    alpha = rgba[..., 3]
    inside = alpha[distance < anim.radius - 6]
    outside = alpha[distance > anim.radius + 8]
    assert inside.min() >= 240, f"frame {frame}: disc alpha down to {inside.min()}"
    assert outside.max() <= 16, f"frame {frame}: background alpha up to {outside.max()}"
    assert outside.mean() < 1, f"frame {frame}: background alpha mean {outside.mean():.2f}"


async def check_character(
    storage: Storage, files: CharacterFiles, anim: Animation, tmp: Path
) -> None:
    """Everything a browser would rely on, decoded back from storage."""
    assert (files.webm_key, files.webp_key, files.png_key) == (
        f"{PREFIX}character.webm",
        f"{PREFIX}character.webp",
        f"{PREFIX}poster.png",
    )
    assert (files.width, files.height) == (anim.size, anim.size)
    assert files.webm_bytes == await storage.size(files.webm_key)
    assert files.webp_bytes == await storage.size(files.webp_key)
    assert files.png_bytes == await storage.size(files.png_key)

    webm = await download(storage, files.webm_key, tmp / "out.webm")
    header = subprocess.run(
        [FFMPEG, "-hide_banner", "-i", str(webm)], capture_output=True, text=True
    )
    assert "vp9" in header.stderr
    assert re.search(r"alpha_mode\s*:\s*1", header.stderr)
    seconds = anim.frames / anim.fps
    duration = re.search(r"Duration: 00:00:(\d+\.\d+)", header.stderr)
    assert duration is not None and abs(float(duration[1]) - seconds) < 0.1

    with_alpha = decode_rgba(webm, anim.size, vcodec="libvpx-vp9")
    assert len(with_alpha) == files.frames == anim.frames
    for frame in (0, anim.frames // 2, anim.frames - 1):
        assert_disc_is_opaque_and_background_transparent(with_alpha[frame], anim, frame)
    # FFmpeg's native VP9 decoder silently drops alpha: why players and tests need libvpx.
    native = decode_rgba(webm, anim.size, vcodec=None)
    assert native[..., 3].min() == 255

    webp = Image.open(io.BytesIO(await storage.read_bytes(files.webp_key)))
    assert isinstance(webp, WebPImagePlugin.WebPImageFile)
    assert webp.is_animated
    step = max(1, anim.fps // 12)
    assert webp.n_frames == anim.frames // step
    assert webp.info.get("loop") == 0
    for index in (0, webp.n_frames // 2):
        webp.seek(index)
        frame_rgba = np.asarray(webp.convert("RGBA"))
        assert webp.mode == "RGBA"
        assert_disc_is_opaque_and_background_transparent(
            frame_rgba, anim, index, source_frame=index * step
        )

    poster = Image.open(io.BytesIO(await storage.read_bytes(files.png_key)))
    assert poster.format == "PNG"
    assert poster.mode == "RGBA"
    assert poster.size == (anim.size, anim.size)
    assert_disc_is_opaque_and_background_transparent(np.asarray(poster), anim, 0)


async def test_transcode_makes_a_transparent_character(
    small_animation: Animation, tmp_path: Path
) -> None:
    storage = local_storage(tmp_path)
    await upload_inputs(storage, small_animation)
    messages: list[str] = []

    started = time.perf_counter()
    files = await transcode_character(
        storage,
        video_key=VIDEO_KEY,
        mask_key=MASK_KEY,
        out_prefix=PREFIX,
        fps=small_animation.fps,
        heartbeat=messages.append,
    )
    elapsed = time.perf_counter() - started

    await check_character(storage, files, small_animation, tmp_path)
    assert messages
    assert len(outputs_under(tmp_path / "store")) == 3  # no temp files left beside them
    print(
        f"\n128 px, {small_animation.fps} fps, {small_animation.frames} frames: "
        f"{elapsed:.2f} s; webm {files.webm_bytes} B, webp {files.webp_bytes} B, "
        f"png {files.png_bytes} B"
    )


async def test_transcode_through_gcs(
    small_animation: Animation, gcs_storage: GCSStorage, tmp_path: Path
) -> None:
    """The production path: inputs copied out of the bucket, outputs streamed back in."""
    await upload_inputs(gcs_storage, small_animation)
    files = await transcode_character(
        gcs_storage, video_key=VIDEO_KEY, mask_key=MASK_KEY, out_prefix=PREFIX, fps=12
    )
    await check_character(gcs_storage, files, small_animation, tmp_path)


@pytest.mark.parametrize("delta", [-1, 1])
async def test_a_mask_a_frame_off_stops_at_the_shorter_input(tmp_path: Path, delta: int) -> None:
    anim = make_animation(tmp_path / "anim", size=64, fps=12, seconds=1, mask_frames_delta=delta)
    storage = local_storage(tmp_path)
    await upload_inputs(storage, anim)

    files = await transcode_character(
        storage, video_key=VIDEO_KEY, mask_key=MASK_KEY, out_prefix=PREFIX, fps=12
    )

    expected = min(anim.frames, anim.frames + delta)
    assert files.frames == expected
    webm = storage.path_for(files.webm_key)
    assert len(decode_rgba(webm, anim.size, vcodec="libvpx-vp9")) == expected


async def test_a_higher_frame_rate_keeps_the_webp_at_12_fps(tmp_path: Path) -> None:
    anim = make_animation(tmp_path / "anim", size=64, fps=24, seconds=1)
    storage = local_storage(tmp_path)
    await upload_inputs(storage, anim)

    files = await transcode_character(
        storage, video_key=VIDEO_KEY, mask_key=MASK_KEY, out_prefix=PREFIX, fps=24
    )

    assert files.frames == 24
    webp = Image.open(storage.path_for(files.webp_key))
    assert isinstance(webp, WebPImagePlugin.WebPImageFile)
    assert webp.n_frames == 12
    webp.load()
    assert webp.info["duration"] == pytest.approx(1000 / 12, abs=1)


async def test_corrupt_video_raises_and_leaves_nothing(
    small_animation: Animation, tmp_path: Path
) -> None:
    storage = local_storage(tmp_path)
    await upload_inputs(storage, small_animation)
    await storage.write_bytes(VIDEO_KEY, os.urandom(200_000), content_type="video/mp4")

    with pytest.raises(TranscodeError) as raised:
        await transcode_character(
            storage, video_key=VIDEO_KEY, mask_key=MASK_KEY, out_prefix=PREFIX, fps=12
        )

    assert "cannot read the video input" in str(raised.value)
    assert "Invalid data" in str(raised.value)  # ffmpeg's own words, from its stderr
    assert outputs_under(tmp_path / "store") == []


async def test_ffmpeg_failing_mid_encode_raises_and_leaves_nothing(
    small_animation: Animation, tmp_path: Path
) -> None:
    """The video changes size half-way, so alphamerge fails after output has streamed.

    (ffmpeg shrugs off merely corrupt frames; a mid-stream size change is a failure it
    cannot recover from, which is what this path needs.)
    """
    storage = local_storage(tmp_path)
    await upload_inputs(storage, small_animation)
    halves = []
    for name, options in (("a.ts", ["-t", "1"]), ("b.ts", ["-ss", "1", "-vf", "scale=96:96"])):
        halves.append(tmp_path / name)
        subprocess.run(
            [
                FFMPEG, "-hide_banner", "-loglevel", "error", "-i", str(small_animation.video),
                *options, "-c:v", "libx264", "-f", "mpegts", str(tmp_path / name),
            ],
            check=True,
        )  # fmt: skip
    joined = b"".join(p.read_bytes() for p in halves)
    await storage.write_bytes(VIDEO_KEY, joined, content_type="video/mp2t")

    with pytest.raises(TranscodeError) as raised:
        await transcode_character(
            storage, video_key=VIDEO_KEY, mask_key=MASK_KEY, out_prefix=PREFIX, fps=12
        )

    assert "ffmpeg exited with" in str(raised.value)
    assert "frame sizes do not match" in str(raised.value)
    assert outputs_under(tmp_path / "store") == []


async def test_storage_failure_for_one_output_removes_the_others(
    small_animation: Animation, tmp_path: Path
) -> None:
    storage = local_storage(tmp_path)
    await upload_inputs(storage, small_animation)
    # A directory where the WebP should go: the rename onto it fails, for real.
    blocker = storage.path_for(f"{PREFIX}character.webp")
    blocker.mkdir(parents=True)

    with pytest.raises(OSError):
        await transcode_character(
            storage, video_key=VIDEO_KEY, mask_key=MASK_KEY, out_prefix=PREFIX, fps=12
        )

    assert outputs_under(tmp_path / "store") == []
    assert not await storage.exists(f"{PREFIX}character.webm")
    assert not await storage.exists(f"{PREFIX}poster.png")


async def test_missing_input_propagates_object_not_found(tmp_path: Path) -> None:
    from infra.storage import ObjectNotFound

    storage = local_storage(tmp_path)
    with pytest.raises(ObjectNotFound):
        await transcode_character(
            storage, video_key=VIDEO_KEY, mask_key=MASK_KEY, out_prefix=PREFIX, fps=12
        )


def ffmpeg_children() -> list[psutil.Process]:
    return [c for c in psutil.Process().children(recursive=True) if "ffmpeg" in c.name()]


@pytest.fixture(scope="module")
def large_animation(tmp_path_factory: pytest.TempPathFactory) -> Animation:
    return make_animation(tmp_path_factory.mktemp("anim512"), size=512, fps=24, seconds=5)


async def test_cancellation_kills_ffmpeg_and_leaves_nothing(
    large_animation: Animation, tmp_path: Path
) -> None:
    storage = local_storage(tmp_path)
    await upload_inputs(storage, large_animation)
    encoding = asyncio.Event()

    def heartbeat(message: str) -> None:
        if message.startswith("encoding"):
            encoding.set()

    task = asyncio.create_task(
        transcode_character(
            storage,
            video_key=VIDEO_KEY,
            mask_key=MASK_KEY,
            out_prefix=PREFIX,
            fps=24,
            heartbeat=heartbeat,
        )
    )
    await asyncio.wait_for(encoding.wait(), timeout=30)
    assert ffmpeg_children()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert ffmpeg_children() == []
    assert outputs_under(tmp_path / "store") == []


@contextmanager
def peak_rss() -> Iterator[dict[str, float]]:
    """This process's peak RSS over the block, in MiB.

    Linux lets a process reset its own high-water mark (clear_refs 5) and read it back
    (VmHWM); elsewhere fall back to sampling every 5 ms.
    """
    result: dict[str, float] = {}
    try:
        Path("/proc/self/clear_refs").write_text("5")
        precise = True
    except OSError:
        precise = False
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        me = psutil.Process()
        while not stop.is_set():
            samples.append(me.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        stop.set()
        sampler.join()
        result["sampled_mib"] = max(samples) / 2**20
        if precise:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    result["peak_mib"] = int(line.split()[1]) / 1024
        result.setdefault("peak_mib", result["sampled_mib"])


async def test_large_transcode_streams_without_holding_the_video(
    large_animation: Animation, tmp_path: Path
) -> None:
    """512 px, 24 fps, 5 s: report time and peak RSS; RSS must not grow with the video."""
    storage = local_storage(tmp_path)
    await upload_inputs(storage, large_animation)
    before = psutil.Process().memory_info().rss / 2**20
    beats: list[float] = []
    started = time.perf_counter()

    with peak_rss() as memory:
        files = await transcode_character(
            storage,
            video_key=VIDEO_KEY,
            mask_key=MASK_KEY,
            out_prefix=PREFIX,
            fps=24,
            heartbeat=lambda _msg: beats.append(time.perf_counter()),
        )
    elapsed = time.perf_counter() - started

    assert files.frames == 120
    assert (files.width, files.height) == (512, 512)
    webm = storage.path_for(files.webm_key)
    alpha = decode_rgba(webm, 512, vcodec="libvpx-vp9")
    assert len(alpha) == 120
    assert_disc_is_opaque_and_background_transparent(alpha[60], large_animation, 60)
    gaps = np.diff([started, *beats, time.perf_counter()])
    print(
        f"\n512 px, 24 fps, 120 frames: {elapsed:.2f} s; RSS before {before:.0f} MiB, "
        f"peak {memory['peak_mib']:.0f} MiB (sampled {memory['sampled_mib']:.0f} MiB); "
        f"webm {files.webm_bytes} B, webp {files.webp_bytes} B, png {files.png_bytes} B; "
        f"longest heartbeat gap {gaps.max():.1f} s"
    )
    # Streaming bound: ~2 MiB per pipe buffer plus chunks in flight, nowhere near the size
    # of the decoded video (120 x 512 x 512 x 4 = 120 MiB).
    assert memory["peak_mib"] - before < 60
