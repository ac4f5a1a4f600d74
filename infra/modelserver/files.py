"""Output files: moved out of a job's work dir into one flat folder, served by id.

A file id is a random hex name plus the extension, so ids are unguessable, the URL
says what the file is, and serving it needs no lookup table (the Content-Type comes
from the extension). Results describe files the way fal does: ``url``,
``content_type``, ``file_name``, ``file_size`` and, for images and videos, ``width``
and ``height``.
"""

from __future__ import annotations

import mimetypes
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from infra.modelserver.apps.base import OutputFile

_FILE_ID = re.compile(r"^[0-9a-f]{32}\.[a-z0-9]{1,8}$")
_EXTENSIONS = {
    "image/png": ".png",
    "video/mp4": ".mp4",
    "image/jpeg": ".jpg",
    "video/webm": ".webm",
}


class FileStore:
    def __init__(self, root: Path, public_url: str) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.public_url = public_url.rstrip("/")

    def add(
        self, output: OutputFile, *, expires_at: float | None = None
    ) -> tuple[Path, dict[str, Any]]:
        """Move ``output`` into the store; return its new path and fal file object. With
        ``expires_at`` (a Unix time) it is served until then only (fal's object
        lifecycle); the time is kept beside it, in ``<id>.expires``."""
        ext = _EXTENSIONS.get(output.content_type) or output.path.suffix.lower() or ".bin"
        file_id = f"{uuid.uuid4().hex}{ext}"
        target = self.root / file_id
        shutil.move(output.path, target)
        if expires_at is not None:
            _expiry_path(target).write_text(repr(expires_at))
        described: dict[str, Any] = {
            "url": f"{self.public_url}/files/{file_id}",
            "content_type": output.content_type,
            "file_name": output.path.name,
            "file_size": target.stat().st_size,
        }
        if output.width is not None and output.height is not None:
            described["width"] = output.width
            described["height"] = output.height
        return target, described

    def corrupt(self, path: Path) -> None:
        """Overwrite with random bytes of the same size (fault injection)."""
        size = path.stat().st_size
        with path.open("wb") as out:
            remaining = size
            while remaining > 0:
                chunk = min(remaining, 1 << 20)
                out.write(os.urandom(chunk))
                remaining -= chunk

    def path_for(self, file_id: str) -> Path | None:
        if not _FILE_ID.match(file_id):
            return None
        path = self.root / file_id
        if not path.is_file():
            return None
        expiry = _expiry_path(path)
        try:
            expires_at = float(expiry.read_text())
        except (OSError, ValueError):
            return path  # no expiry: served for as long as it is kept
        if time.time() >= expires_at:
            path.unlink(missing_ok=True)
            expiry.unlink(missing_ok=True)
            return None
        return path

    @staticmethod
    def content_type(path: Path) -> str:
        for content_type, ext in _EXTENSIONS.items():
            if path.suffix == ext:
                return content_type
        return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def _expiry_path(path: Path) -> Path:
    return path.with_name(path.name + ".expires")
