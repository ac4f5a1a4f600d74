"""Turn a generated animation and its mask into the files a browser shows.

One ffmpeg process decodes both inputs once, merges the mask in as alpha and writes three
outputs at the same time, each to its own pipe that is streamed straight into storage:

- ``character.webm``: VP9 with alpha, the main asset (Chromium plays it transparent);
- ``character.webp``: an animated WebP fallback at no more than 12 fps;
- ``poster.png``: the first frame, RGBA.

When the mask is itself a video with alpha (a VP9 WebM whose stream says
``alpha_mode: 1``, as a background-removal model such as veed's gives with its vp9
codec), it already is the character, colour and alpha: it is used as it is, decoded with
libvpx (FFmpeg's native VP9 decoder drops alpha), and the colour video is not read.

Nothing is held whole in this process: pipes are read in at most CHUNK_SIZE pieces and
asyncio's stream readers pause ffmpeg when storage is slower than the encoder. The inputs
are MP4s, which ffmpeg cannot read from a pipe (the index may sit at the end), so they
are copied to a temp folder first unless the storage is local and they already are files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ffmpeg
import imageio_ffmpeg

from infra.storage import CHUNK_SIZE, ObjectNotFound, Storage
from infra.storage.local import LocalStorage

log = logging.getLogger(__name__)

WEBM_NAME = "character.webm"
WEBP_NAME = "character.webp"
POSTER_NAME = "poster.png"

WEBP_MAX_FPS = 12  # the WebP fallback is all keyframes; halving the rate halves its size
WEBP_QUALITY = 70
WEBP_COMPRESSION_LEVEL = 2  # vs the default 4: ~40% less time for ~1.5% more bytes (measured)
VP9_CRF = 32
VP9_CPU_USED = 4  # libvpx speed: vs 2, half the time for +3% size and -0.002 SSIM (measured)
HEARTBEAT_SECONDS = 2.0
PROBE_TIMEOUT_SECONDS = 60.0
STDERR_TAIL_LINES = 15

# ffmpeg's ``-progress`` output is ``key=value`` lines; anything else on stderr is a log line.
_PROGRESS_LINE = re.compile(r"[a-z0-9_]+=.*")
_DURATION = re.compile(r"Duration: (\d+):(\d{2}):(\d{2}(?:\.\d+)?)")
# "Stream #0:0[0x1](und): Video: h264 (High) (avc1 / 0x31637661), yuv420p(...), 512x512 [SAR"
# The ", " before the size keeps codec tags such as "0x31637661" from matching.
_VIDEO_SIZE = re.compile(r"Stream #\d+:\d+.*?: Video: .*?, (\d+)x(\d+)")
# A Matroska/WebM video stream carrying an alpha plane is tagged so.
_ALPHA_MODE = re.compile(r"^\s*alpha_mode\s*:\s*1\s*$", re.IGNORECASE | re.MULTILINE)


class TranscodeError(RuntimeError):
    """ffmpeg could not make a character from these inputs.

    The message ends with the last lines ffmpeg wrote to stderr, which is where the reason
    is (corrupt input, unsupported codec, size mismatch).
    """


@dataclass(frozen=True)
class CharacterFiles:
    webm_key: str
    webp_key: str
    png_key: str
    webm_bytes: int
    webp_bytes: int
    png_bytes: int
    width: int
    height: int
    frames: int


@dataclass(frozen=True)
class _Probe:
    width: int
    height: int
    duration: float | None  # seconds, from the container; None when it does not say
    alpha: bool = False  # a video with its own alpha plane (VP9 WebM, alpha_mode 1)


@dataclass
class _Status:
    """What the heartbeat reports; updated by whichever step is running."""

    step: str = "starting"
    frame: int = 0
    expected_frames: int | None = None
    stderr_tail: deque[str] = field(default_factory=lambda: deque(maxlen=STDERR_TAIL_LINES))

    def message(self) -> str:
        if self.step != "encoding":
            return self.step
        of = f"/{self.expected_frames}" if self.expected_frames else ""
        return f"encoding frame {self.frame}{of}"


async def transcode_character(
    storage: Storage,
    *,
    video_key: str,
    mask_key: str,
    out_prefix: str,
    fps: int,
    heartbeat: Callable[[str], None] = lambda _msg: None,
) -> CharacterFiles:
    """Write the WebM, WebP and PNG of one character under ``out_prefix``.

    ``fps`` is the output frame rate (the input is resampled to it if it differs). The mask
    may be a frame shorter or longer than the video: the output stops at the shorter one.
    On any failure, cancellation included, all three output keys are deleted so a
    character is either complete or absent; ffmpeg failures raise TranscodeError, storage
    failures (such as a missing input) propagate unchanged.
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    prefix = out_prefix.rstrip("/") + "/"
    webm_key, webp_key, png_key = (prefix + n for n in (WEBM_NAME, WEBP_NAME, POSTER_NAME))
    status = _Status()
    ticker = asyncio.create_task(_heartbeat_every(HEARTBEAT_SECONDS, heartbeat, status))
    try:
        with tempfile.TemporaryDirectory(prefix="bitbuddies-transcode-") as scratch:
            status.step = "fetching inputs"
            heartbeat(status.message())
            video_path, mask_path = await asyncio.gather(
                _local_copy(storage, video_key, Path(scratch) / "video.mp4"),
                _local_copy(storage, mask_key, Path(scratch) / "mask.mp4"),
            )
            status.step = "probing inputs"
            exe = imageio_ffmpeg.get_ffmpeg_exe()
            video, mask = await asyncio.gather(
                _probe(exe, video_path, "video"), _probe(exe, mask_path, "mask")
            )
            if mask.alpha:
                video = mask  # the character is the mask video alone, at its size
            status.step = "encoding"
            sizes, frames = await _encode(
                exe,
                storage,
                video_path=video_path,
                mask_path=mask_path,
                video=video,
                mask=mask,
                fps=fps,
                keys=(webm_key, webp_key, png_key),
                status=status,
            )
    except BaseException:
        # Awaiting here is safe even when cancelled: the cancellation has been delivered.
        for key in (webm_key, webp_key, png_key):
            try:
                await storage.delete(key)
            except Exception:
                log.exception("could not delete %s after a failed transcode", key)
        raise
    finally:
        ticker.cancel()
    heartbeat(f"encoded {frames} frames")
    return CharacterFiles(
        webm_key=webm_key,
        webp_key=webp_key,
        png_key=png_key,
        webm_bytes=sizes[0],
        webp_bytes=sizes[1],
        png_bytes=sizes[2],
        width=video.width,
        height=video.height,
        frames=frames,
    )


async def _heartbeat_every(
    seconds: float, heartbeat: Callable[[str], None], status: _Status
) -> None:
    """A clock, not ffmpeg's output, drives heartbeats: ffmpeg can be silent for a while
    (libwebp_anim assembles the whole animation only when the input ends)."""
    while True:
        await asyncio.sleep(seconds)
        try:
            heartbeat(status.message())
        except Exception:
            log.exception("heartbeat failed")


async def _local_copy(storage: Storage, key: str, destination: Path) -> Path:
    """A real file holding the object: the storage's own file when local, else a copy."""
    if isinstance(storage, LocalStorage):
        path = storage.path_for(key)
        if not await asyncio.to_thread(path.is_file):
            raise ObjectNotFound(key)
        return path
    handle = await asyncio.to_thread(destination.open, "wb")
    try:
        async for chunk in storage.read_stream(key):
            await asyncio.to_thread(handle.write, chunk)
    finally:
        handle.close()
    return destination


async def _probe(exe: str, path: Path, role: str) -> _Probe:
    """Size and duration from ``ffmpeg -i``'s banner: this ffmpeg build has no ffprobe."""
    process = await asyncio.create_subprocess_exec(
        exe,
        "-hide_banner",
        "-nostdin",
        "-i",
        str(path),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
            _, err = await process.communicate()
    except TimeoutError:
        raise TranscodeError(
            f"reading the {role} took over {PROBE_TIMEOUT_SECONDS:.0f} s"
        ) from None
    finally:
        await _reap(process)
    text = err.decode(errors="replace")
    size = _VIDEO_SIZE.search(text)
    if size is None:
        tail = "\n".join(text.strip().splitlines()[-STDERR_TAIL_LINES:])
        raise TranscodeError(f"cannot read the {role} input:\n{tail}")
    duration = _DURATION.search(text)
    seconds = None
    if duration is not None:
        hours, minutes, secs = duration.groups()
        seconds = int(hours) * 3600 + int(minutes) * 60 + float(secs)
    return _Probe(
        width=int(size[1]),
        height=int(size[2]),
        duration=seconds,
        alpha=_ALPHA_MODE.search(text) is not None,
    )


def _ffmpeg_command(
    exe: str,
    *,
    video_path: Path,
    mask_path: Path,
    width: int,
    height: int,
    fps: int,
    duration: float | None,
    webp_fd: int,
    png_fd: int,
    alpha_video: bool = False,
) -> list[str]:
    if alpha_video:
        # The mask is the character already (colour and alpha): libvpx keeps its alpha.
        merged = (
            ffmpeg.input(str(mask_path), vcodec="libvpx-vp9")
            .video.filter("fps", fps)
            .filter("format", "yuva420p")
            .filter("setsar", 1)
        )
    else:
        merged = _alpha_merged(video_path, mask_path, width, height, fps)
    split = merged.split()

    webm_options: dict[str, object] = {
        "format": "webm",
        "vcodec": "libvpx-vp9",
        "pix_fmt": "yuva420p",
        "crf": VP9_CRF,
        "b:v": 0,  # constant quality: crf alone decides the size
        "auto-alt-ref": 0,  # alt-ref frames break the alpha plane in some libvpx builds
        "deadline": "good",
        "cpu-used": VP9_CPU_USED,
        "row-mt": 1,
    }
    if duration is not None:
        # A pipe cannot be rewound to patch the duration in at the end, so without this
        # the WebM says "unknown duration". Chromium handles that, but a stated one gives
        # players a real timeline.
        webm_options["metadata:s:v:0"] = f"DURATION={duration:.6f}"
    webm = split[0].output("pipe:1", **webm_options)
    webp = (
        split[1]
        .filter("fps", min(fps, WEBP_MAX_FPS))
        .output(
            f"pipe:{webp_fd}",
            format="webp",
            vcodec="libwebp_anim",
            pix_fmt="yuva420p",  # lossy colour with an alpha plane
            lossless=0,
            quality=WEBP_QUALITY,
            compression_level=WEBP_COMPRESSION_LEVEL,
            loop=0,  # also keeps the muxer from seeking back to write a loop count
        )
    )
    poster = split[2].output(
        f"pipe:{png_fd}", format="image2pipe", vcodec="png", pix_fmt="rgba", **{"frames:v": 1}
    )
    graph_args: list[str] = ffmpeg.merge_outputs(webm, webp, poster).get_args()
    global_args = ["-hide_banner", "-nostdin", "-nostats", "-loglevel", "warning"]
    return [exe, *global_args, "-progress", "pipe:2", *graph_args]


def _alpha_merged(video_path: Path, mask_path: Path, width: int, height: int, fps: int) -> Any:
    """The colour video with the mask merged in as its alpha."""
    # Both inputs are brought to the output rate *before* merging: an ``fps`` filter after
    # a ``shortest`` merge drops the last frame (the merge's EOF carries the last frame's
    # own timestamp, so fps treats that frame as having no duration).
    video = ffmpeg.input(str(video_path)).video.filter("fps", fps)
    # Masks arrive as ordinary (limited-range) video: ``format=gray`` converts them to the
    # full 0-255 range alpha needs. Scaling to the video's size makes a mask rendered at a
    # different resolution work instead of failing alphamerge.
    alpha = (
        ffmpeg.input(str(mask_path))
        .video.filter("fps", fps)
        .filter("scale", width, height)
        .filter("format", "gray")
    )
    # setsar=1: width and height are reported as display size, so pixels must be square.
    return ffmpeg.filter([video, alpha], "alphamerge", shortest=1).filter("setsar", 1)


async def _encode(
    exe: str,
    storage: Storage,
    *,
    video_path: Path,
    mask_path: Path,
    video: _Probe,
    mask: _Probe,
    fps: int,
    keys: tuple[str, str, str],
    status: _Status,
) -> tuple[tuple[int, int, int], int]:
    if mask.alpha:  # the mask alone is the character: its size and length
        video = mask
    durations = [d for d in (video.duration, mask.duration) if d]
    duration = None
    if durations:
        status.expected_frames = max(1, round(min(durations) * fps))
        duration = status.expected_frames / fps

    async with contextlib.AsyncExitStack() as stack:
        webp_read, webp_write = os.pipe()
        png_read, png_write = os.pipe()
        for fd in (webp_read, png_read):
            stack.callback(_close_quietly, fd)
        command = _ffmpeg_command(
            exe,
            video_path=video_path,
            mask_path=mask_path,
            width=video.width,
            height=video.height,
            fps=fps,
            duration=duration,
            webp_fd=webp_write,
            png_fd=png_write,
            alpha_video=mask.alpha,
        )
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,  # no stdin pipe: nothing to forget to close
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(webp_write, png_write),
                limit=CHUNK_SIZE,
            )
        finally:
            # The child has its own copies; ours must go or the readers never see EOF.
            os.close(webp_write)
            os.close(png_write)
        stack.push_async_callback(_reap, process)
        assert process.stdout is not None and process.stderr is not None

        webp_reader = await _pipe_reader(webp_read, stack)
        png_reader = await _pipe_reader(png_read, stack)
        finished = asyncio.create_task(_watch(process, process.stderr, status))
        stack.callback(finished.cancel)

        async def checked(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
            """The output's bytes, failing at EOF unless ffmpeg succeeded.

            Raising from inside the stream makes ``write_stream`` abort instead of
            publishing the truncated file a failed ffmpeg leaves behind.
            """
            while chunk := await reader.read(CHUNK_SIZE):
                yield chunk
            returncode, frames = await asyncio.shield(finished)
            if returncode != 0:
                raise TranscodeError(_failure(f"ffmpeg exited with {returncode}", status))
            if frames == 0:
                raise TranscodeError(_failure("ffmpeg produced no frames", status))

        webm_key, webp_key, png_key = keys
        uploads = [
            asyncio.create_task(
                storage.write_stream(webm_key, checked(process.stdout), content_type="video/webm")
            ),
            asyncio.create_task(
                storage.write_stream(webp_key, checked(webp_reader), content_type="image/webp")
            ),
            asyncio.create_task(
                storage.write_stream(png_key, checked(png_reader), content_type="image/png")
            ),
        ]
        webm_bytes, webp_bytes, png_bytes = await _all_or_nothing(uploads)
        _, frames = await finished
    return (webm_bytes, webp_bytes, png_bytes), frames


async def _watch(
    process: asyncio.subprocess.Process, stderr: asyncio.StreamReader, status: _Status
) -> tuple[int, int]:
    """Drain stderr (a full pipe would stall ffmpeg), track progress, keep the log tail."""
    while line_bytes := await stderr.readline():
        line = line_bytes.decode(errors="replace").strip()
        if not line:
            continue
        if _PROGRESS_LINE.fullmatch(line):
            key, _, value = line.partition("=")
            if key == "frame" and value.isdigit():
                status.frame = int(value)
        else:
            status.stderr_tail.append(line)
    returncode = await process.wait()
    return returncode, status.frame


async def _all_or_nothing(tasks: list[asyncio.Task[int]]) -> list[int]:
    """Wait for every task; at the first failure cancel the rest and raise that failure.

    Unlike a TaskGroup this raises the original exception (a TranscodeError, a storage
    error), not an ExceptionGroup the activity wrapper would have to unpack.
    """
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and (error := task.exception()) is not None:
            raise error
    return [task.result() for task in tasks]


async def _pipe_reader(fd: int, stack: contextlib.AsyncExitStack) -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=CHUNK_SIZE, loop=loop)
    pipe = os.fdopen(os.dup(fd), "rb", buffering=0)
    try:
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader, loop=loop), pipe
        )
    except BaseException:
        pipe.close()
        raise
    stack.callback(transport.close)
    return reader


async def _reap(process: asyncio.subprocess.Process) -> None:
    """Make sure ffmpeg is gone: killed if we are leaving early, always waited for."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    await process.wait()


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _failure(summary: str, status: _Status) -> str:
    tail = "\n".join(status.stderr_tail) or "(ffmpeg wrote nothing to stderr)"
    return f"{summary}:\n{tail}"
