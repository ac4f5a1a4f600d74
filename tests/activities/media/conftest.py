"""Fixtures for the media tests; the helpers live in media_fixtures.py. The GCS emulator
(``gcs_emulator_url``) is the session's one, from tests/support/gcs.py."""

from __future__ import annotations

import pytest

from infra.storage.gcs import GCSStorage
from tests.activities.media.media_fixtures import Animation, make_animation
from tests.support.gcs import BUCKET, emulator_client


@pytest.fixture(scope="session")
def small_animation(tmp_path_factory: pytest.TempPathFactory) -> Animation:
    return make_animation(tmp_path_factory.mktemp("anim128"), size=128, fps=12, seconds=2)


@pytest.fixture
def gcs_storage(gcs_emulator_url: str) -> GCSStorage:
    return GCSStorage(
        BUCKET, client=emulator_client(gcs_emulator_url), upload_chunk_size=256 * 1024
    )
