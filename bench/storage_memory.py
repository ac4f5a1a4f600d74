"""Peak memory of streaming a large ffmpeg output into GCS, beside a small one.

An ffmpeg process writes raw 720p video (a transcode-like output, but one that makes
hundreds of MB in seconds) in NUT to a pipe; our process reads the pipe in CHUNK_SIZE
pieces, as activities/media.py does, and feeds them to ``GCSStorage.write_stream`` with
its production upload chunk size, into a GCS emulator started here. Then the object is
read back with ``GCSStorage.read_stream`` (ranged requests) and hashed. Each case runs in
a child process of its own, which reports its own peak resident memory (``VmHWM``): the
emulator keeps every object in its own memory, and ffmpeg is a process of its own, so
neither is counted. The first (smallest) size is the baseline; the goal is a ratio
within 1.2x. The middle size shows whether memory grows past one upload chunk.
After every upload the object's size and MD5 in the emulator are checked against what
ffmpeg wrote.

    .venv/bin/python -m bench.storage_memory [--sizes-mb 5 50 500]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg

from infra.storage import CHUNK_SIZE
from infra.storage import emulator as gcs_emulator
from infra.storage.gcs import DEFAULT_UPLOAD_CHUNK_SIZE, GCSStorage

BUCKET = "bench-storage"
WIDTH, HEIGHT = 1280, 720
FRAME_BYTES = WIDTH * HEIGHT * 3  # rgb24
MB = 1_000_000


def _peak_rss() -> int:
    """This process's peak resident memory so far, in bytes (Linux only)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _ffmpeg_command(frames: int) -> list[str]:
    return [
        imageio_ffmpeg.get_ffmpeg_exe(),
        *("-hide_banner", "-nostdin", "-loglevel", "error"),
        *("-f", "lavfi", "-i", f"testsrc=size={WIDTH}x{HEIGHT}:rate=24"),
        *("-frames:v", str(frames), "-c:v", "rawvideo", "-pix_fmt", "rgb24"),
        *("-f", "nut", "pipe:1"),
    ]


async def _upload(storage: GCSStorage, key: str, frames: int) -> dict[str, object]:
    process = await asyncio.create_subprocess_exec(
        *_ffmpeg_command(frames),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        limit=CHUNK_SIZE,
    )
    assert process.stdout is not None
    stdout = process.stdout
    digest = hashlib.md5()  # a checksum to compare with GCS's, not for security

    async def chunks() -> AsyncIterator[bytes]:
        while chunk := await stdout.read(CHUNK_SIZE):
            digest.update(chunk)
            yield chunk
        if await process.wait() != 0:
            raise RuntimeError(f"ffmpeg exited with {process.returncode}")

    start = time.perf_counter()
    size = await storage.write_stream(key, chunks(), content_type="video/x-nut")
    return {
        "bytes": size,
        "md5": base64.b64encode(digest.digest()).decode(),
        "seconds": time.perf_counter() - start,
    }


async def _download(storage: GCSStorage, key: str) -> dict[str, object]:
    digest = hashlib.md5()
    size = 0
    start = time.perf_counter()
    async for chunk in storage.read_stream(key):
        digest.update(chunk)
        size += len(chunk)
    return {
        "bytes": size,
        "md5": base64.b64encode(digest.digest()).decode(),
        "seconds": time.perf_counter() - start,
    }


def _child(args: argparse.Namespace) -> None:
    """One case, in this process alone; prints its figures as JSON."""
    storage = GCSStorage(BUCKET, client=gcs_emulator.client(args.url))
    if args.child == "upload":
        result = asyncio.run(_upload(storage, args.key, args.frames))
    else:
        result = asyncio.run(_download(storage, args.key))
    result["peak_rss"] = _peak_rss()
    print(json.dumps(result))


@dataclass(frozen=True)
class Case:
    seconds: float
    peak_rss: int
    size: int


def _run_child(url: str, case: str, key: str, frames: int = 0) -> dict[str, object]:
    command = [sys.executable, "-m", "bench.storage_memory", "--child", case]
    command += ["--url", url, "--key", key, "--frames", str(frames)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{case} of {key} failed:\n{done.stderr}")
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _check(storage: GCSStorage, key: str, result: dict[str, object]) -> None:
    """The stored object is exactly what went through the pipe."""
    blob = storage._bucket.get_blob(key)
    if blob is None:
        raise RuntimeError(f"{key} is not in the emulator")
    if blob.size != result["bytes"]:
        raise RuntimeError(f"{key}: {blob.size} bytes stored, {result['bytes']} sent")
    if blob.md5_hash is not None and blob.md5_hash != result["md5"]:
        raise RuntimeError(f"{key}: MD5 {blob.md5_hash} stored, {result['md5']} sent")


def _measure(url: str, storage: GCSStorage, name: str, target_mb: float) -> tuple[Case, Case]:
    frames = max(1, math.ceil(target_mb * MB / FRAME_BYTES))
    key = f"bench/{name}.nut"
    up = _run_child(url, "upload", key, frames)
    _check(storage, key, up)
    down = _run_child(url, "download", key)
    if (down["bytes"], down["md5"]) != (up["bytes"], up["md5"]):
        raise RuntimeError(f"{key}: read back {down['bytes']} bytes, not what was written")
    storage._bucket.blob(key).delete()  # the emulator holds it in memory
    size = int(str(up["bytes"]))

    def case(result: dict[str, object]) -> Case:
        return Case(float(str(result["seconds"])), int(str(result["peak_rss"])), size)

    return case(up), case(down)


def _row(label: str, cases: list[Case]) -> str:
    base, *rest = cases
    peaks = " ".join(f"{c.peak_rss / 2**20:>8.1f} MiB" for c in cases)
    ratios = " ".join(f"{c.peak_rss / base.peak_rss:>6.2f}x" for c in rest)
    largest = cases[-1]
    rate = largest.size / MB / largest.seconds
    return f"{label:<9} {peaks}  {ratios}   {largest.seconds:6.2f} s ({rate:.0f} MB/s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--sizes-mb",
        type=float,
        nargs="+",
        default=[5, 50, 500],
        help="the first is the baseline",
    )
    parser.add_argument("--child", choices=["upload", "download"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    uploads: list[Case] = []
    downloads: list[Case] = []
    with (
        tempfile.TemporaryDirectory(prefix="bitbuddies-bench-") as tmp,
        gcs_emulator.running(Path(tmp) / "emulator.log", buckets=(BUCKET,)) as url,
    ):
        storage = GCSStorage(BUCKET, client=gcs_emulator.client(url))
        for n, size_mb in enumerate(args.sizes_mb):
            up, down = _measure(url, storage, f"case-{n}", size_mb)
            uploads.append(up)
            downloads.append(down)
    print(
        f"\nPeak RSS of our process (VmHWM) streaming ffmpeg's output into GCS (emulator),"
        f" {DEFAULT_UPLOAD_CHUNK_SIZE // 2**20} MiB upload chunks, then reading it back by"
        f" {CHUNK_SIZE // 2**20} MiB ranges; each case in its own process; sizes and MD5"
        " checked in the emulator. Ratios to the first size; goal: within 1.2x.\n"
    )
    sizes = " ".join(f"{c.size / MB:>9.1f} MB" for c in uploads)
    ratios = " ".join(f"{'ratio':>7}" for _ in uploads[1:])
    print(f"{'':<9} {sizes}  {ratios}   largest's time")
    print(_row("upload", uploads))
    print(_row("download", downloads))


if __name__ == "__main__":
    main()
