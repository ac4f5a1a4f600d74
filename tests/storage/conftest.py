"""A real GCS emulator for the storage contract tests, one per test session.

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
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.cloud import storage
from google.oauth2 import service_account

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


@pytest.fixture(scope="session")
def gcs_emulator_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
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
        client = make_emulator_client(url)
        client.create_bucket(BUCKET)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def make_emulator_client(url: str) -> storage.Client:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STORAGE_EMULATOR_HOST", url)
        return storage.Client()


@pytest.fixture(scope="session")
def gcs_client(gcs_emulator_url: str) -> storage.Client:
    return make_emulator_client(gcs_emulator_url)


@pytest.fixture(scope="session")
def gcs_bucket(gcs_emulator_url: str) -> str:
    return BUCKET


@pytest.fixture(scope="session")
def signing_key_info() -> dict[str, str]:
    """A throwaway service-account key: V4 signing is local RSA, no Google account needed."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    info = {
        "type": "service_account",
        "project_id": "bitbuddies-test",
        "private_key_id": "test-key",
        "private_key": pem,
        "client_email": "signer@bitbuddies-test.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    return info


@pytest.fixture(scope="session")
def signing_credentials(signing_key_info: dict[str, str]) -> Any:
    return service_account.Credentials.from_service_account_info(signing_key_info)  # type: ignore[no-untyped-call]
