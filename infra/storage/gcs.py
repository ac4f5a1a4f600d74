"""Storage in a Google Cloud Storage bucket (or the local emulator).

google-cloud-storage is synchronous, so every call runs in a worker thread. Objects are
read and written in bounded pieces: a video never has to fit in this process's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

from google.api_core import exceptions as google_exceptions
from google.cloud import storage
from google.cloud.storage.fileio import BlobWriter

from infra.storage.base import CHUNK_SIZE, ObjectNotFound
from infra.storage.local import run_to_completion, validate_key, validate_prefix

log = logging.getLogger(__name__)

# Bytes per resumable-upload request (a multiple of 256 KiB, as GCS requires). Larger means
# fewer round trips; each upload buffers up to this much in memory.
DEFAULT_UPLOAD_CHUNK_SIZE = 8 * CHUNK_SIZE

_GONE = (google_exceptions.NotFound, google_exceptions.PreconditionFailed)


class _AbortableBlobWriter(BlobWriter):  # type: ignore[misc]  # the library is untyped
    """A BlobWriter that can be made unable to finalise.

    BlobWriter is an ``io`` object, and ``IOBase.__del__`` calls ``close()``, which uploads
    whatever is buffered as the *final* chunk: a writer dropped after a failure would
    publish a truncated object when it is garbage collected (checked against the
    emulator). ``terminate()`` prevents that only if its DELETE request succeeds, so once a
    write has failed we make ``close`` a no-op first and only then try to terminate.
    """

    _abandoned = False

    def abandon(self) -> None:
        self._abandoned = True

    def close(self) -> None:
        if not self._abandoned:
            super().close()


def load_signing_credentials(key_file: Path) -> Any:
    """Service-account credentials from a JSON key file, for signing URLs locally."""
    from google.oauth2 import service_account

    return service_account.Credentials.from_service_account_file(str(key_file))  # type: ignore[no-untyped-call]


class GCSStorage:
    """Objects in one bucket.

    ``client`` defaults to ``storage.Client()``, which honours ``STORAGE_EMULATOR_HOST``
    (anonymous credentials then). ``signing_credentials`` are the service-account
    credentials used to sign URLs locally; without them the client's own credentials are
    used, which must then be able to sign (a service-account key, not a user login).
    """

    def __init__(
        self,
        bucket_name: str,
        *,
        client: storage.Client | None = None,
        signing_credentials: Any = None,
        upload_chunk_size: int = DEFAULT_UPLOAD_CHUNK_SIZE,
    ) -> None:
        self._client = client if client is not None else storage.Client()
        self._bucket = self._client.bucket(bucket_name)
        self._signing_credentials = signing_credentials
        self._upload_chunk_size = upload_chunk_size

    @property
    def bucket_name(self) -> str:
        name: str = self._bucket.name
        return name

    def _blob(self, key: str) -> Any:
        return self._bucket.blob(validate_key(key))

    async def write_stream(
        self, key: str, chunks: AsyncIterator[bytes], *, content_type: str
    ) -> int:
        """Feed the chunks to a resumable upload; the object appears only at finalisation.

        Nothing is finalised unless every chunk arrived: on any exception (including
        cancellation) the writer is abandoned and the upload session deleted, best effort.
        An undeleted session is harmless: GCS discards it after a week, with no object.
        """
        writer = _AbortableBlobWriter(
            self._blob(key), chunk_size=self._upload_chunk_size, content_type=content_type
        )
        # One thread per upload runs all the writer's calls, in order: a write abandoned
        # by a cancellation finishes before the cleanup's terminate starts, instead of
        # racing it. It also keeps memory flat: the 8 MiB chunk buffers are allocated and
        # freed in that one thread's malloc arena, where the next chunk reuses them; spread
        # over the shared pool's threads, each thread's arena kept one (+10 MiB at 60 MB,
        # bench/storage_memory.py).
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gcs-upload")
        loop = asyncio.get_running_loop()
        size = 0
        try:
            async for chunk in chunks:
                if chunk:
                    await loop.run_in_executor(thread, writer.write, chunk)
                    size += len(chunk)
            await run_to_completion(writer.close, executor=thread)
        except BaseException:
            writer.abandon()
            try:
                await loop.run_in_executor(thread, writer.terminate)
            except Exception:
                log.warning("could not delete the abandoned upload session for %s", key)
            raise
        finally:
            thread.shutdown(wait=False)
        return size

    async def write_bytes(self, key: str, data: bytes, *, content_type: str) -> int:
        """One request: GCS simple uploads are atomic too."""
        blob = self._blob(key)
        await asyncio.to_thread(blob.upload_from_string, data, content_type=content_type)
        return len(data)

    def read_stream(self, key: str) -> AsyncIterator[bytes]:
        """Ranged downloads of at most CHUNK_SIZE each, pinned to one generation.

        Pinning means an object replaced mid-read raises ObjectNotFound instead of splicing
        two versions together.
        """
        return self._iter_object(validate_key(key))

    async def _iter_object(self, key: str) -> AsyncIterator[bytes]:
        blob = await asyncio.to_thread(self._bucket.get_blob, key)
        if blob is None:
            raise ObjectNotFound(key)
        size: int = blob.size or 0
        generation: int | None = blob.generation
        for start in range(0, size, CHUNK_SIZE):
            end = min(start + CHUNK_SIZE, size) - 1
            try:
                data: bytes = await asyncio.to_thread(
                    blob.download_as_bytes,
                    start=start,
                    end=end,
                    raw_download=True,
                    checksum=None,  # per-range checksums are not available
                    if_generation_match=generation,
                )
            except _GONE as exc:
                raise ObjectNotFound(key) from exc
            yield data

    async def read_bytes(self, key: str) -> bytes:
        blob = self._blob(key)
        try:
            data: bytes = await asyncio.to_thread(blob.download_as_bytes, raw_download=True)
        except google_exceptions.NotFound as exc:
            raise ObjectNotFound(key) from exc
        return data

    async def exists(self, key: str) -> bool:
        found: bool = await asyncio.to_thread(self._blob(key).exists)
        return found

    async def size(self, key: str) -> int:
        blob = await asyncio.to_thread(self._bucket.get_blob, validate_key(key))
        if blob is None:
            raise ObjectNotFound(key)
        return int(blob.size or 0)

    async def delete(self, key: str) -> None:
        blob = self._blob(key)
        with contextlib.suppress(google_exceptions.NotFound):
            await asyncio.to_thread(blob.delete)

    async def delete_prefix(self, prefix: str) -> int:
        blobs = await asyncio.to_thread(
            lambda: list(self._client.list_blobs(self._bucket, prefix=validate_prefix(prefix)))
        )
        for blob in blobs:
            with contextlib.suppress(google_exceptions.NotFound):
                await asyncio.to_thread(blob.delete)
        return len(blobs)

    def signed_url(
        self, key: str, *, expires_in: timedelta, content_type: str | None = None
    ) -> str:
        """A V4 signed GET URL, computed locally from the signing key (no request).

        ``content_type`` becomes ``response-content-type`` so the download is served with
        that type whatever the object's metadata says.
        """
        url: str = self._blob(key).generate_signed_url(
            version="v4",
            expiration=expires_in,
            method="GET",
            credentials=self._signing_credentials,
            response_type=content_type,
        )
        return url
