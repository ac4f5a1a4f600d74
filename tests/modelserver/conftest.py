"""A real model server subprocess for the whole session, and clients to drive it.

Tests talk to the server only the way the pipeline does: through
``infra.falclient.make_fal_client`` (fal_client's queue API) and, for the test hooks
under ``/_local``, plain httpx.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import fal_client
import httpx
import pytest
from ms_helpers import REPO, WORKERS, ModelServer, data_uri, skimage_png, wait_idle

from infra.falclient import make_fal_client


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    root = tmp_path_factory.mktemp("modelserver")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = root / "server.log"
    with log_path.open("wb") as log:
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
            yield ModelServer(url, root / "data", log_path)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="session")
def fal(model_server: ModelServer) -> fal_client.AsyncClient:
    return make_fal_client(fal_key=None, model_server_url=model_server.url)


@pytest.fixture(scope="session")
async def local(model_server: ModelServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=model_server.url, timeout=30) as client:
        yield client


@pytest.fixture
async def clean(local: httpx.AsyncClient) -> httpx.AsyncClient:
    """Start from empty records, stats and faults (and no jobs still running)."""
    await wait_idle(local)
    (await local.post("/_local/reset")).raise_for_status()
    return local


@pytest.fixture(scope="session")
def astronaut_uri() -> str:
    return str(data_uri(skimage_png("astronaut.png")))


@pytest.fixture(scope="session")
def coffee_uri() -> str:
    return str(data_uri(skimage_png("coffee.png")))
