"""Fixtures for the media tests; the helpers live in media_fixtures.py (importable by name)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from media_fixtures import BUCKET, Animation, emulator_client, make_animation

from infra.storage.gcs import GCSStorage


@pytest.fixture(scope="session")
def small_animation(tmp_path_factory: pytest.TempPathFactory) -> Animation:
    return make_animation(tmp_path_factory.mktemp("anim128"), size=128, fps=12, seconds=2)


@pytest.fixture(scope="session")
def gcs_emulator_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real GCS emulator with one bucket, ``BUCKET``.

    A near copy of the storage tests' fixture: sibling conftests cannot share fixtures
    and tests/conftest.py belongs to someone else.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    executable = Path(sys.executable).parent / "gcp-storage-emulator"
    if not executable.exists():
        pytest.skip("gcp-storage-emulator is not installed")
    log_path = tmp_path_factory.mktemp("gcs-emulator") / "emulator.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(executable), "start", "--port", str(port), "--in-memory"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(log_path.read_text()) from None
                time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        emulator_client(url).create_bucket(BUCKET)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def gcs_storage(gcs_emulator_url: str) -> GCSStorage:
    return GCSStorage(
        BUCKET, client=emulator_client(gcs_emulator_url), upload_chunk_size=256 * 1024
    )
