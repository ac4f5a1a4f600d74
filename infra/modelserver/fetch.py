"""Fetch job inputs given as URLs into the job's work dir.

fal accepts ``http(s)://`` URLs and ``data:`` URIs for every file input, so we do too.
Downloads stream to disk with a size cap, so a video never sits whole in memory and a
hostile or broken URL cannot exhaust it. Every failure becomes ``InputDownloadError``,
which the job reports as ``error_type="input_download_failed"``.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
import uuid
from pathlib import Path
from urllib.parse import unquote_to_bytes

import httpx

from infra.modelserver.apps.base import InputDownloadError

MAX_INPUT_BYTES = 50 * 1024 * 1024
DOWNLOAD_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
_CHUNK = 1024 * 1024
_DATA_URI = re.compile(r"^data:(?P<mime>[^;,]*)(?P<params>(;[^;,]*)*),(?P<data>.*)$", re.DOTALL)


def fetch_input(url: str, work_dir: Path, *, max_bytes: int = MAX_INPUT_BYTES) -> Path:
    """Save the resource behind ``url`` under ``work_dir`` and return its path."""
    work_dir.mkdir(parents=True, exist_ok=True)
    if url.startswith("data:"):
        return _save_data_uri(url, work_dir, max_bytes)
    if url.startswith(("http://", "https://")):
        return _download(url, work_dir, max_bytes)
    raise InputDownloadError(f"Unsupported URL scheme in {url[:40]!r}")


def _target(work_dir: Path, content_type: str | None, url_path: str = "") -> Path:
    ext = Path(url_path).suffix.lower()
    if not ext and content_type:
        ext = mimetypes.guess_extension(content_type.split(";")[0].strip()) or ""
    return work_dir / f"input-{uuid.uuid4().hex[:12]}{ext[:8]}"


def _save_data_uri(url: str, work_dir: Path, max_bytes: int) -> Path:
    match = _DATA_URI.match(url)
    if match is None:
        raise InputDownloadError("Malformed data: URI")
    if len(match["data"]) > max_bytes * 4 // 3 + 4:
        raise InputDownloadError(f"Input larger than {max_bytes} bytes")
    try:
        if ";base64" in match["params"].lower():
            data = base64.b64decode(match["data"], validate=False)
        else:
            data = unquote_to_bytes(match["data"])
    except (binascii.Error, ValueError) as exc:
        raise InputDownloadError(f"Bad base64 in data: URI: {exc}") from exc
    if len(data) > max_bytes:
        raise InputDownloadError(f"Input larger than {max_bytes} bytes")
    path = _target(work_dir, match["mime"] or None)
    path.write_bytes(data)
    return path


def _download(url: str, work_dir: Path, max_bytes: int) -> Path:
    try:
        with (
            httpx.Client(timeout=DOWNLOAD_TIMEOUT, follow_redirects=True) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise InputDownloadError(f"GET {url} answered {response.status_code}")
            declared = int(response.headers.get("content-length") or 0)
            if declared > max_bytes:
                raise InputDownloadError(f"Input larger than {max_bytes} bytes")
            path = _target(work_dir, response.headers.get("content-type"), response.url.path)
            size = 0
            with path.open("wb") as out:
                for chunk in response.iter_bytes(_CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise InputDownloadError(f"Input larger than {max_bytes} bytes")
                    out.write(chunk)
            return path
    except httpx.HTTPError as exc:
        raise InputDownloadError(f"Could not download {url}: {type(exc).__name__}: {exc}") from exc
