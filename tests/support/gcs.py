"""A real GCS emulator, one per test session, with one bucket (``BUCKET``), for the
tests of GCS storage (tests/infra/storage) and of the transcode through it
(tests/activities/media). tests/conftest.py registers the fixture, so both folders share
one emulator; tests sharing the bucket keep apart by key prefix.

The emulator is started as the benchmarks start it (infra/storage/emulator.py), which
sets STORAGE_EMULATOR_HOST only while a client is being built: leaving it in the
environment would point every other test in the session at this emulator.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.cloud import storage

from infra.storage import emulator

BUCKET = "bitbuddies-test"


def emulator_client(url: str) -> storage.Client:
    """A client of the emulator at ``url``."""
    return emulator.client(url)


@pytest.fixture(scope="session")
def gcs_emulator_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The emulator's URL; ``BUCKET`` exists in it."""
    if emulator.executable() is None:
        pytest.skip("gcp-storage-emulator is not installed")
    log_path = tmp_path_factory.mktemp("gcs-emulator") / "emulator.log"
    with emulator.running(log_path, buckets=(BUCKET,)) as url:
        yield url
