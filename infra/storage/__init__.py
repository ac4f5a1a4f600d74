"""Object storage: a local folder in development, a GCS bucket in production.

Callers depend only on the ``Storage`` protocol; ``storage_from_settings`` picks the backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from infra.storage.base import CHUNK_SIZE, ObjectNotFound, Storage
from infra.storage.local import LocalStorage, verify_signature

if TYPE_CHECKING:
    from infra.settings import Settings

__all__ = [
    "CHUNK_SIZE",
    "LocalStorage",
    "ObjectNotFound",
    "Storage",
    "storage_from_settings",
    "verify_signature",
]


def storage_from_settings(settings: Settings) -> Storage:
    """GCS when a bucket is configured, else the local folder.

    The GCS client reads ``STORAGE_EMULATOR_HOST`` itself (and then uses anonymous
    credentials), so the emulator needs no code path of its own. The GCS module is imported
    only here, so local development never loads google-cloud-storage.
    """
    if settings.gcs_bucket:
        from infra.storage.gcs import GCSStorage, load_signing_credentials

        signer = settings.gcs_signing_key_file
        return GCSStorage(
            settings.gcs_bucket,
            signing_credentials=load_signing_credentials(signer) if signer else None,
        )
    return LocalStorage(
        settings.storage_dir,
        public_url=settings.public_url,
        signing_secret=settings.signing_secret.get_secret_value(),
    )
