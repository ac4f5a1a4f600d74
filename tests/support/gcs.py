"""A real GCS emulator, one per test session, with one bucket (``BUCKET``), for the
tests of GCS storage (tests/infra/storage) and of the transcode through it
(tests/activities/media). tests/conftest.py registers the fixture, so both folders share
one emulator; tests sharing the bucket keep apart by key prefix.

STORAGE_EMULATOR_HOST is set only while a client is being built: the library reads it
once, at construction, and leaving it in the environment would point every other test in
the session at this emulator.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.cloud import storage

from infra.supervisor import free_port

BUCKET = "bitbuddies-test"


def _emulator_executable() -> str:
    beside_python = Path(sys.executable).parent / "gcp-storage-emulator"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("gcp-storage-emulator")
    if found is None:
        pytest.skip("gcp-storage-emulator is not installed")
    return found


def emulator_client(url: str) -> storage.Client:
    """A client of the emulator at ``url``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STORAGE_EMULATOR_HOST", url)
        return storage.Client()


@pytest.fixture(scope="session")
def gcs_emulator_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The emulator's URL; ``BUCKET`` exists in it."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("gcs-emulator") / "emulator.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [_emulator_executable(), "start", "--port", str(port), "--in-memory"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"emulator exited: {log_path.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"emulator did not start: {log_path.read_text()}") from None
                time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        emulator_client(url).create_bucket(BUCKET)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
