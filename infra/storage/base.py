"""The one storage interface. Large files travel by key; bytes move as streams.

Keys are relative, slash-separated paths such as ``generations/<id>/input/photo.png``.
A write is all-or-nothing: readers never see a half-written object.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Protocol

CHUNK_SIZE = 1024 * 1024


class ObjectNotFound(LookupError):
    """No object is stored under that key."""


class Storage(Protocol):
    async def write_stream(
        self, key: str, chunks: AsyncIterator[bytes], *, content_type: str
    ) -> int:
        """Store every chunk under ``key`` atomically; return the size in bytes."""
        ...

    async def write_bytes(self, key: str, data: bytes, *, content_type: str) -> int: ...

    def read_stream(self, key: str) -> AsyncIterator[bytes]:
        """Yield the object's bytes in chunks of at most CHUNK_SIZE; ObjectNotFound if absent."""
        ...

    async def read_bytes(self, key: str) -> bytes:
        """Small objects only (photos, masks): never a video."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def size(self, key: str) -> int: ...

    async def delete(self, key: str) -> None:
        """Idempotent: deleting a missing key is not an error."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with ``prefix`` (a folder: it ends with
        ``/``); return how many there were. Idempotent."""
        ...

    def signed_url(
        self, key: str, *, expires_in: timedelta, content_type: str | None = None
    ) -> str:
        """A URL anyone holding it may GET until it expires (model providers, browsers)."""
        ...
