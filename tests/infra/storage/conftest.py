"""The storage contract tests' fixtures: a client of the session's GCS emulator
(tests/support/gcs.py), its bucket, and a throwaway signing key."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.cloud import storage
from google.oauth2 import service_account

from tests.support.gcs import BUCKET, emulator_client


@pytest.fixture(scope="session")
def gcs_client(gcs_emulator_url: str) -> storage.Client:
    return emulator_client(gcs_emulator_url)


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
