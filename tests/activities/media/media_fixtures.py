"""Helpers for the media tests: synthetic animations and decoding.

Synthetic character animations are made with the same ffmpeg the transcoder uses.

A disc moves left to right over a static gridded background; the mask is the same disc,
white on black. Both are H.264 MP4s like the model's output, and ``disc_centre`` says where
the disc is in any frame so tests can probe alpha inside and outside it.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import numpy.typing as npt

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


@dataclass(frozen=True)
class Animation:
    video: Path
    mask: Path
    size: int
    fps: int
    seconds: float
    frames: int
    radius: int

    def disc_centre(self, frame: int) -> tuple[float, float]:
        """Within a couple of pixels: overlay truncates x and aligns it to chroma pixels."""
        start, span = _travel(self.size, self.radius)
        x = start + span * (frame / self.fps) / self.seconds
        return x + self.radius, (self.size - 2 * self.radius) // 2 + self.radius


def _travel(size: int, radius: int) -> tuple[int, int]:
    margin = size // 16
    return margin, size - 2 * radius - 2 * margin


def _x_expr(size: int, radius: int, seconds: float) -> str:
    start, span = _travel(size, radius)
    return f"{start}+{span}*t/{seconds}"


def make_animation(
    directory: Path, *, size: int, fps: int, seconds: float, mask_frames_delta: int = 0
) -> Animation:
    """Write ``video.mp4`` and ``mask.mp4``; the mask may have a frame more or fewer."""
    directory.mkdir(parents=True, exist_ok=True)
    radius = size // 6
    diameter = 2 * radius
    frames = round(seconds * fps)
    x = _x_expr(size, radius, seconds)
    y = (size - diameter) // 2
    disc_alpha = f"if(lte(hypot(X-{radius}+0.5,Y-{radius}+0.5),{radius}),255,0)"
    disc = (
        f"color=c=0xE04020:s={diameter}x{diameter}:r={fps},format=rgba,"
        f"geq=r='200+40*sin(X/5)':g='60+Y/2':b=40:a='{disc_alpha}',trim=end_frame=1,"
        f"loop=loop=-1:size=1,setpts=N/{fps}/TB"
    )
    white_disc = (
        f"color=c=white:s={diameter}x{diameter}:r={fps},format=rgba,"
        f"geq=r=255:g=255:b=255:a='{disc_alpha}',trim=end_frame=1,"
        f"loop=loop=-1:size=1,setpts=N/{fps}/TB"
    )
    background = (
        f"color=c=0x3060A0:s={size}x{size}:r={fps},"
        f"drawgrid=w={max(8, size // 16)}:h={max(8, size // 16)}:t=2:c=0xF0E0A0"
    )
    overlay = f"overlay=x='{x}':y={y}:eval=frame:shortest=1"
    video_graph = f"{background}[bg];{disc}[fg];[bg][fg]{overlay},format=yuv420p"
    mask_graph = (
        f"color=c=black:s={size}x{size}:r={fps}[bg];{white_disc}[fg];"
        f"[bg][fg]{overlay},format=gray,format=yuv420p"
    )
    video = directory / "video.mp4"
    mask = directory / "mask.mp4"
    for graph, out, count in (
        (video_graph, video, frames),
        (mask_graph, mask, frames + mask_frames_delta),
    ):
        subprocess.run(
            [
                FFMPEG, "-hide_banner", "-loglevel", "error", "-y",
                "-f", "lavfi", "-i", graph,
                "-frames:v", str(count), "-c:v", "libx264", "-preset", "veryfast",
                "-crf", "18", "-pix_fmt", "yuv420p", str(out),
            ],
            check=True,
        )  # fmt: skip
    return Animation(
        video=video, mask=mask, size=size, fps=fps, seconds=seconds, frames=frames, radius=radius
    )


def decode_rgba(data_path: Path, size: int, *, vcodec: str | None) -> npt.NDArray[np.uint8]:
    """All frames as (n, h, w, 4). ``vcodec`` picks the decoder: libvpx-vp9 keeps alpha."""
    command = [FFMPEG, "-hide_banner", "-loglevel", "error"]
    if vcodec is not None:
        command += ["-c:v", vcodec]
    command += ["-i", str(data_path), "-f", "rawvideo", "-pix_fmt", "rgba", "-"]
    raw = subprocess.run(command, check=True, capture_output=True).stdout
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, size, size, 4)
