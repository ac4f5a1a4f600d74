"""Time and CPU of the transcode per generation, beside ffmpeg's fastest settings.

The inputs are a hosted model's real size, made once per run with ffmpeg: a 1280x720,
5 s, 24 fps colour video in H.264 MP4 (as Kling answers) and a grey mask video in VP9
WebM (as birefnet's mask_video). Then:

- our real ``transcode_character`` (activities/media.py) on them, through local storage:
  wall seconds, CPU seconds of its ffmpeg children and of this process;
- each output format on its own: our ffmpeg command (built by activities/media.py, not
  copied) with its filter graph pruned to that one output, beside the same command with
  that output's encoder at its fastest settings (VP9 ``-deadline realtime -cpu-used 8``,
  WebP and PNG ``-compression_level 0``);
- all three at once, ours beside every output at its fastest.

Outputs go to files through ``pipe:N`` descriptors, as they go to storage through pipes
in production. CPU is user + system of the ffmpeg process (``wait4``).

    .venv/bin/python -m bench.transcode [--runs 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg

from activities.media import _ffmpeg_command, transcode_character
from infra.storage.local import LocalStorage

WIDTH, HEIGHT, FPS, SECONDS = 1280, 720, 24, 5
FASTEST: dict[str, dict[str, str]] = {
    "libvpx-vp9": {"-deadline": "realtime", "-cpu-used": "8"},
    "libwebp_anim": {"-compression_level": "0"},
    "png": {"-compression_level": "0"},
}
NAMES = {"libvpx-vp9": "WebM VP9+alpha", "libwebp_anim": "animated WebP", "png": "poster PNG"}
_LABEL = re.compile(r"\[([^\]]+)\]")


@dataclass(frozen=True)
class Cost:
    wall: float
    cpu: float
    bytes: int = 0

    @staticmethod
    def median(costs: list[Cost]) -> Cost:
        return Cost(
            statistics.median(c.wall for c in costs),
            statistics.median(c.cpu for c in costs),
            costs[0].bytes,
        )


def make_inputs(folder: Path) -> tuple[Path, Path]:
    """The colour video and the mask, at the hosted models' sizes and codecs."""
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    video, mask = folder / "video.mp4", folder / "mask.webm"
    size, duration = f"{WIDTH}x{HEIGHT}", f"{SECONDS}"
    quiet = ["-hide_banner", "-nostdin", "-loglevel", "error", "-y"]
    subprocess.run(
        [
            *(exe, *quiet),
            *("-f", "lavfi", "-i", f"testsrc2=size={size}:rate={FPS}:duration={duration}"),
            *("-c:v", "libx264", "-preset", "medium", "-crf", "20", "-pix_fmt", "yuv420p"),
            *("-movflags", "+faststart", str(video)),
        ],
        check=True,
    )
    # A soft-edged white figure moving on black: a segmentation model's matte.
    figure = (
        f"color=c=black:s={size}:r={FPS}:d={duration}[bg];"
        f"color=c=white:s=420x600:r={FPS}:d={duration}[fg];"
        f"[bg][fg]overlay=x='200+600*t/{SECONDS}':y=60:shortest=1,boxblur=6,format=gray"
    )
    subprocess.run(
        [
            *(exe, *quiet),
            *("-f", "lavfi", "-i", figure),
            *("-c:v", "libvpx-vp9", "-pix_fmt", "yuv420p", "-b:v", "0", "-crf", "30"),
            *("-deadline", "realtime", "-cpu-used", "8", str(mask)),
        ],
        check=True,
    )
    return video, mask


@dataclass
class Output:
    label: str  # the filter graph's output it maps
    options: list[str]  # between -map and the target
    codec: str


def _split(command: list[str]) -> tuple[list[str], str, list[Output]]:
    """Our command as (arguments before the graph, the graph, the outputs)."""
    at = command.index("-filter_complex")
    head, graph, rest = command[:at], command[at + 1], command[at + 2 :]
    outputs: list[Output] = []
    while rest:
        if rest[0] != "-map":
            raise ValueError(f"unexpected argument {rest[0]!r} in our ffmpeg command")
        end = next(i for i, arg in enumerate(rest) if arg.startswith("pipe:"))
        options = rest[2:end]
        outputs.append(Output(rest[1].strip("[]"), options, options[options.index("-vcodec") + 1]))
        rest = rest[end + 1 :]
    # ``-progress pipe:2`` is for the activity's heartbeat; nothing reads it here.
    if "-progress" in head:
        i = head.index("-progress")
        del head[i : i + 2]
    return head, graph, outputs


def _prune(graph: str, keep: set[str]) -> str:
    """The filter graph reduced to what the ``keep`` outputs need: chains whose outputs
    nobody uses go, and a ``split`` keeps only its used outputs."""
    chains = graph.split(";")
    needed = set(keep)
    kept: list[str] = []
    for chain in reversed(chains):
        ins: list[str] = []
        body = chain
        while body.startswith("["):
            label = body[1 : body.index("]")]
            ins.append(label)
            body = body[len(label) + 2 :]
        filt, _, tail = body.partition("[")
        outs = _LABEL.findall("[" + tail) if tail else []
        used = [label for label in outs if label in needed]
        if not used:
            continue
        if len(used) != len(outs):
            if not filt.startswith("split="):
                raise ValueError(f"cannot prune {chain!r}")
            filt = f"split={len(used)}"
        kept.append("".join(f"[{i}]" for i in ins) + filt + "".join(f"[{o}]" for o in used))
        needed.update(ins)
    return ";".join(reversed(kept))


def _faster(options: list[str], overrides: dict[str, str]) -> list[str]:
    changed = list(options)
    for flag, value in overrides.items():
        if flag in changed:
            changed[changed.index(flag) + 1] = value
        else:
            changed += [flag, value]
    return changed


def _run(head: list[str], graph: str, outputs: list[Output], folder: Path) -> Cost:
    """One ffmpeg run, each output written to a file through a ``pipe:N`` descriptor."""
    files = [folder / f"out-{n}" for n in range(len(outputs))]
    fds = [os.open(f, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) for f in files]
    command = [*head, "-filter_complex", graph]
    for output, fd in zip(outputs, fds, strict=True):
        command += ["-map", f"[{output.label}]", *output.options, f"pipe:{fd}"]
    log = folder / "ffmpeg.log"
    start = time.perf_counter()
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stderr=stderr, pass_fds=tuple(fds)
        )
    for fd in fds:
        os.close(fd)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"ffmpeg failed: {' '.join(command)}\n{log.read_text()}")
    return Cost(wall, usage.ru_utime + usage.ru_stime, sum(f.stat().st_size for f in files))


def _ours_and_fastest(
    head: list[str], graph: str, outputs: list[Output], folder: Path, runs: int
) -> tuple[Cost, Cost]:
    fastest = [Output(o.label, _faster(o.options, FASTEST[o.codec]), o.codec) for o in outputs]
    ours, fast = [], []
    for _ in range(runs):  # alternate, so a busy moment on the machine slows both
        ours.append(_run(head, graph, outputs, folder))
        fast.append(_run(head, graph, fastest, folder))
    return Cost.median(ours), Cost.median(fast)


def _real_transcode(video: Path, mask: Path, folder: Path) -> tuple[float, float, float, int]:
    """Our transcode_character once: wall, ffmpeg CPU, this process's CPU, bytes out."""
    storage = LocalStorage(folder / "store", public_url="http://bench", signing_secret="bench")
    storage.path_for("in/video.mp4").parent.mkdir(parents=True, exist_ok=True)
    storage.path_for("in/video.mp4").write_bytes(video.read_bytes())
    storage.path_for("in/mask.webm").write_bytes(mask.read_bytes())
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    files = asyncio.run(
        transcode_character(
            storage,
            video_key="in/video.mp4",
            mask_key="in/mask.webm",
            out_prefix="characters/bench",
            fps=FPS,
        )
    )
    wall = time.perf_counter() - start
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    own_after = resource.getrusage(resource.RUSAGE_SELF)

    def cpu(before: resource.struct_rusage, after: resource.struct_rusage) -> float:
        return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    size = files.webm_bytes + files.webp_bytes + files.png_bytes
    return wall, cpu(children, children_after), cpu(own, own_after), size


def _rows(
    head: list[str], graph: str, outputs: list[Output], folder: Path, runs: int
) -> Iterator[str]:
    for output in outputs:
        ours, fast = _ours_and_fastest(head, _prune(graph, {output.label}), [output], folder, runs)
        yield _row(NAMES[output.codec], ours, fast)
    ours, fast = _ours_and_fastest(head, graph, outputs, folder, runs)
    yield _row("all three, one ffmpeg", ours, fast)


def _row(name: str, ours: Cost, fast: Cost) -> str:
    return (
        f"{name:<22} {ours.wall:>7.2f} {ours.cpu:>7.2f} {ours.bytes / 1e6:>7.2f}"
        f"   {fast.wall:>7.2f} {fast.cpu:>7.2f} {fast.bytes / 1e6:>7.2f}"
        f"   {ours.wall / fast.wall:>5.2f}x {ours.cpu / fast.cpu:>5.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=1, help="median of this many per figure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bitbuddies-bench-") as tmp:
        folder = Path(tmp)
        video, mask = make_inputs(folder)
        command = _ffmpeg_command(
            imageio_ffmpeg.get_ffmpeg_exe(),
            video_path=video,
            mask_path=mask,
            width=WIDTH,
            height=HEIGHT,
            fps=FPS,
            duration=float(SECONDS),
            webp_fd=3,  # placeholders: every output's target is replaced
            png_fd=4,
        )
        head, graph, outputs = _split(command)
        rows = list(_rows(head, graph, outputs, folder, args.runs))
        real = [_real_transcode(video, mask, folder) for _ in range(args.runs)]
        video_mb, mask_mb = video.stat().st_size / 1e6, mask.stat().st_size / 1e6
    print(
        f"\nOne generation's outputs from {WIDTH}x{HEIGHT}, {SECONDS} s, {FPS} fps inputs"
        f" (H.264 MP4 colour {video_mb:.1f} MB, VP9 WebM mask {mask_mb:.2f} MB),"
        f" {os.cpu_count()} cores, median of {args.runs} run(s)\n"
    )
    print(f"{'':<22} {'ours':^23}   {'ffmpeg fastest':^23}   {'ours/fastest':^13}")
    print(
        f"{'output':<22} {'wall s':>7} {'CPU s':>7} {'MB':>7}"
        f"   {'wall s':>7} {'CPU s':>7} {'MB':>7}   {'wall':>6} {'CPU':>6}"
    )
    for row in rows:
        print(row)
    wall, ffmpeg_cpu, own_cpu, size = (statistics.median(r[i] for r in real) for i in range(4))
    print(
        f"\ntranscode_character (local storage): {wall:.2f} s wall, {ffmpeg_cpu:.2f} s CPU in"
        f" ffmpeg, {own_cpu:.2f} s CPU in this process, {size / 1e6:.2f} MB written"
    )


if __name__ == "__main__":
    main()
