"""Image and video plumbing shared by the apps: decoding, resizing, ffmpeg pipes.

Videos go through ffmpeg (the binary shipped in ``imageio-ffmpeg``) one raw frame at a
time, in both directions, so memory stays flat whatever the length. Commands are built
with ffmpeg-python; we run them with ``subprocess`` ourselves so stderr goes to a file
(an unread stderr pipe can fill up and deadlock ffmpeg) and stdin is always closed.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import cv2
import ffmpeg
import imageio_ffmpeg
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

from infra.modelserver.apps.base import InvalidInputError

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]

EXIF_ORIENTATION_TAG = 0x0112
# Clockwise degrees that ImageOps.exif_transpose rotates by, per EXIF orientation value
# (2, 4, 5, 7 also mirror; we report their rotation part).
ORIENTATION_DEGREES = {1: 0, 2: 0, 3: 180, 4: 180, 5: 90, 6: 90, 7: 270, 8: 270}


@dataclass(frozen=True)
class LoadedImage:
    rgb: U8
    rotation: int
    original_width: int
    original_height: int


def load_image(path: Path) -> LoadedImage:
    """Decode any PIL-readable image upright (EXIF orientation applied), as RGB uint8.

    Transparent pixels are composited onto white, as a viewer would show them.
    """
    try:
        with Image.open(path) as img:
            orientation = int(img.getexif().get(EXIF_ORIENTATION_TAG, 1) or 1)
            upright = ImageOps.exif_transpose(img)
            upright.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidInputError(f"Input is not a readable image: {exc}") from exc
    if upright.mode in ("RGBA", "LA", "PA") or (
        upright.mode == "P" and "transparency" in upright.info
    ):
        rgba = upright.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        upright = Image.alpha_composite(canvas, rgba)
    rgb = np.asarray(upright.convert("RGB"), dtype=np.uint8).copy()
    return LoadedImage(
        rgb=rgb,
        rotation=ORIENTATION_DEGREES.get(orientation, 0),
        original_width=rgb.shape[1],
        original_height=rgb.shape[0],
    )


def load_mask(path: Path, size: tuple[int, int] | None = None) -> U8:
    """Decode a mask as a single 0..255 channel, optionally resized to ``(width, height)``."""
    try:
        with Image.open(path) as img:
            upright = ImageOps.exif_transpose(img)
            if upright.mode in ("RGBA", "LA"):
                gray = upright.getchannel("A")
            else:
                gray = upright.convert("L")
            mask = np.asarray(gray, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InvalidInputError(f"Mask is not a readable image: {exc}") from exc
    if size is not None and (mask.shape[1], mask.shape[0]) != size:
        mask = np.asarray(cv2.resize(mask, size, interpolation=cv2.INTER_LINEAR), dtype=np.uint8)
    return mask


def fit_max_side(img: U8, size: int) -> U8:
    """Resize so the longer side is exactly ``size`` (up or down), keeping the aspect."""
    h, w = img.shape[:2]
    scale = size / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    if (new_w, new_h) == (w, h):
        return img
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return np.asarray(cv2.resize(img, (new_w, new_h), interpolation=interp), dtype=np.uint8)


def save_png(img: U8, path: Path) -> Path:
    """Write RGB (H, W, 3) or gray (H, W) uint8 as PNG."""
    mode = "L" if img.ndim == 2 else "RGB"
    Image.fromarray(img, mode=mode).save(path, format="PNG", optimize=False, compress_level=6)
    return path


# --- video -------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float | None


_SIZE = re.compile(r"Video:.*?\b(\d{2,5})x(\d{2,5})\b")
_FPS = re.compile(r"Video:.*?([\d.]+) fps")
_ROTATION = re.compile(r"rotation of (-?[\d.]+) degrees")


def ffmpeg_exe() -> str:
    return str(imageio_ffmpeg.get_ffmpeg_exe())


def probe_video(path: Path) -> VideoInfo:
    """Width, height and frame rate as ffmpeg will decode them (no ffprobe is shipped)."""
    proc = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-i", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    size = _SIZE.search(proc.stderr)
    if size is None:
        raise InvalidInputError("Input is not a readable video")
    width, height = int(size[1]), int(size[2])
    rotation = _ROTATION.search(proc.stderr)
    if rotation is not None and round(abs(float(rotation[1]))) % 180 == 90:
        width, height = height, width  # ffmpeg auto-rotates on decode
    fps = _FPS.search(proc.stderr)
    return VideoInfo(width=width, height=height, fps=float(fps[1]) if fps else None)


def iter_video_frames(path: Path, info: VideoInfo, *, pix_fmt: str = "rgb24") -> Iterator[U8]:
    """Yield decoded frames one by one: (H, W, 3) for rgb24, (H, W) for gray."""
    channels = 1 if pix_fmt == "gray" else 3
    frame_bytes = info.width * info.height * channels
    args = (
        ffmpeg.input(str(path))
        .output("pipe:", format="rawvideo", pix_fmt=pix_fmt, fps_mode="passthrough")
        .global_args("-hide_banner", "-loglevel", "error", "-nostdin")
        .compile(cmd=ffmpeg_exe())
    )
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr)
        assert proc.stdout is not None
        try:
            while True:
                buf = proc.stdout.read(frame_bytes)
                if len(buf) < frame_bytes:
                    break
                frame = np.frombuffer(buf, dtype=np.uint8)
                shape = (info.height, info.width) if channels == 1 else (info.height, info.width, 3)
                yield frame.reshape(shape)
            if proc.wait(timeout=30) != 0:
                raise InvalidInputError(f"Video decoding failed: {_tail(stderr)}")
        finally:
            proc.stdout.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()


class VideoWriter:
    """Encode frames to an H.264 MP4 (yuv420p, even size) by piping raw frames to ffmpeg.

    ``pix_fmt`` is the layout of the frames you write: ``rgb24`` (H, W, 3) or ``gray``
    (H, W). Use as a context manager; leaving it by an exception kills the encoder.
    """

    def __init__(
        self,
        path: Path,
        width: int,
        height: int,
        fps: float,
        *,
        pix_fmt: str = "rgb24",
        crf: int = 16,
        preset: str = "veryfast",
    ) -> None:
        if width % 2 or height % 2:
            raise ValueError(f"H.264 yuv420p needs even dimensions, got {width}x{height}")
        self.path, self.width, self.height, self.frames = path, width, height, 0
        self._channels = 1 if pix_fmt == "gray" else 3
        args = (
            ffmpeg.input("pipe:", format="rawvideo", pix_fmt=pix_fmt, s=f"{width}x{height}", r=fps)
            .output(
                str(path),
                vcodec="libx264",
                pix_fmt="yuv420p",
                crf=crf,
                preset=preset,
                r=fps,
                movflags="+faststart",
            )
            .global_args("-hide_banner", "-loglevel", "error")
            .overwrite_output()
            .compile(cmd=ffmpeg_exe())
        )
        # Closed in close()/abort(); a with-block cannot span the writer's lifetime.
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        self._proc = subprocess.Popen(args, stdin=subprocess.PIPE, stderr=self._stderr)

    def write(self, frame: U8) -> None:
        expected = (
            (self.height, self.width) if self._channels == 1 else (self.height, self.width, 3)
        )
        if frame.shape != expected or frame.dtype != np.uint8:
            raise ValueError(f"frame {frame.shape} {frame.dtype}, expected {expected} uint8")
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(np.ascontiguousarray(frame).tobytes())
        except BrokenPipeError as exc:
            raise RuntimeError(f"ffmpeg encoder died: {self._stderr_text()}") from exc
        self.frames += 1

    def close(self) -> None:
        """Finish the file; raises if ffmpeg failed."""
        try:
            if self._proc.stdin is not None and not self._proc.stdin.closed:
                self._proc.stdin.close()
        except BrokenPipeError:
            pass
        code = self._proc.wait(timeout=120)
        message = self._stderr_text()
        self._stderr.close()
        if code != 0:
            raise RuntimeError(f"ffmpeg encoder exited {code}: {message}")

    def abort(self) -> None:
        try:
            if self._proc.stdin is not None:
                self._proc.stdin.close()
        except BrokenPipeError:
            pass
        finally:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._stderr.close()

    def _stderr_text(self) -> str:
        return _tail(self._stderr)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _tail(stream: IO[Any], limit: int = 2000) -> str:
    stream.seek(0)
    data = stream.read()
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
    return text.strip()[-limit:]


def even_crop(img: U8) -> U8:
    """Drop a trailing row/column if needed so both dimensions are even (yuv420p)."""
    h, w = img.shape[:2]
    return img[: h - h % 2, : w - w % 2]
