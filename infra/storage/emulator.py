"""A local GCS emulator (the ``gcp-storage-emulator`` package, objects in memory), for the
tests and benchmarks of GCS storage. Never used by the service itself.

The google-cloud-storage client reads ``STORAGE_EMULATOR_HOST`` once, when it is built,
and then talks to that URL with anonymous credentials: ``client`` sets the variable only
while it builds one, so nothing else in the process is pointed at the emulator.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from google.cloud import storage

from infra.supervisor import free_port

START_TIMEOUT_SECONDS = 20.0


def executable() -> str | None:
    """The emulator's command: beside this Python (a virtualenv), else on PATH."""
    beside_python = Path(sys.executable).parent / "gcp-storage-emulator"
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("gcp-storage-emulator")


def client(url: str) -> storage.Client:
    """A client of the emulator at ``url``."""
    before = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = url
    try:
        return storage.Client()
    finally:
        if before is None:
            del os.environ["STORAGE_EMULATOR_HOST"]
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = before


@contextlib.contextmanager
def running(log_path: Path, *, buckets: tuple[str, ...] = ()) -> Iterator[str]:
    """Start the emulator on a free port, create ``buckets``, yield its URL; stop it after.

    Its output goes to ``log_path``, whose text is in the error if it fails to start.
    """
    command = executable()
    if command is None:
        raise FileNotFoundError("gcp-storage-emulator is not installed")
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [command, "start", "--port", str(port), "--in-memory"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
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
        if buckets:
            made = client(url)
            for bucket in buckets:
                made.create_bucket(bucket)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
