"""Helpers shared by the model server tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fal_client
import httpx
import imageio_ffmpeg
import numpy as np

from tests.support.paths import REPO

WORKERS = 2
SIZE = 256
FPS = 12


@dataclass(frozen=True)
class ModelServer:
    url: str
    data_dir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def spawn(
    root: Path, port: int, *, mimic: str | None = None
) -> tuple[subprocess.Popen[bytes], ModelServer]:
    """Start ``python -m infra.modelserver`` on ``port`` with its data under ``root`` and
    wait until it answers; the log is appended to, so a restarted server keeps one.
    ``mimic``: its ``--mimic`` (also serve those hosted endpoints)."""
    url = f"http://127.0.0.1:{port}"
    log_path = root / "server.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "infra.modelserver",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--data-dir",
                str(root / "data"),
                "--workers",
                str(WORKERS),
                "--public-url",
                url,
                *(["--mimic", mimic] if mimic else []),
            ],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"model server exited:\n{log_path.read_text()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"model server did not start:\n{log_path.read_text()}")
            time.sleep(0.1)
    except BaseException:
        stop(proc)
        raise
    return proc, ModelServer(url, root / "data", log_path)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


async def wait_idle(local: httpx.AsyncClient, timeout: float = 60) -> None:
    """Wait until no job is queued or running, so one test's load never leaks into the next."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = (await local.get("/_local/requests")).json()
        if not any(r["status"] in ("IN_QUEUE", "IN_PROGRESS") for r in records):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("model server still busy")


async def add_fault(
    local: httpx.AsyncClient, app: str, kind: str, times: int = 1, seconds: float = 5.0
) -> None:
    response = await local.post(
        "/_local/faults", json={"app": app, "kind": kind, "times": times, "seconds": seconds}
    )
    response.raise_for_status()


async def wait_for(
    handle: fal_client.AsyncRequestHandle, kind: type[Any], timeout: float = 30
) -> Any:
    """Poll until the request's status is an instance of ``kind``; return that status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = await handle.status(with_logs=True)
        if isinstance(status, kind):
            return status
        await asyncio.sleep(0.02)
    raise AssertionError(f"request {handle.request_id} never reached {kind.__name__}")


async def run(fal: fal_client.AsyncClient, app: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """Submit, wait, fetch: what the pipeline does for one model call."""
    handle = await fal.submit(app, arguments)
    result: dict[str, Any] = await handle.get(interval=0.02)
    return result


async def judged(analysis: dict[str, Any]) -> dict[str, Any]:
    """An analyze result with our verdict on it (usable, problems, figure, full_body), as
    the pipeline's fetch makes it (activities/outputs.py): the app only finds faces."""
    from activities.outputs import judge_analysis

    response = await download(analysis["image"]["url"])
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "analyzed.png"
        path.write_bytes(response.content)
        return await judge_analysis(path, analysis)


async def download(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(url)
        response.raise_for_status()
        return response


async def decode(url: str) -> tuple[list[np.ndarray[Any, Any]], dict[str, Any]]:
    """Download and decode a video with imageio-ffmpeg's reader (not the server's code)."""
    body = (await download(url)).content
    with tempfile.NamedTemporaryFile(suffix=".mp4") as tmp:
        tmp.write(body)
        tmp.flush()
        reader = imageio_ffmpeg.read_frames(tmp.name)
        meta: dict[str, Any] = next(reader)
        width, height = meta["size"]
        frames = [np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in reader]
    return frames, meta
