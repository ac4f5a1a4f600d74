"""Storage in a local folder, for development and single-machine deployments.

Objects are plain files under ``root`` so ffmpeg and humans can look at them directly
(``path_for``). Signed URLs point at the API's own file route, which checks them with
``verify_signature`` before streaming the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import stat
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from infra.storage.base import CHUNK_SIZE, ObjectNotFound

_T = TypeVar("_T")

# One or more segments of safe characters joined by single slashes. Anything else (spaces,
# percent signs, backslashes, empty segments) is refused rather than escaped, so a key is
# always the same string in a URL, in a signature and on disk.
_KEY_PATTERN = re.compile(r"[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*")
_MAX_KEY_LENGTH = 1024  # the GCS limit, so a key that works locally works in production

_TEMP_SUFFIX = ".partial"


def validate_key(key: str) -> str:
    """Refuse any key that could escape ``root`` or collide with an in-flight temp file.

    Segments may not start with a dot: that rules out ``.`` and ``..`` and reserves hidden
    names for the temporary files that ``write_stream`` renames into place.
    """
    if (
        not isinstance(key, str)
        or len(key) > _MAX_KEY_LENGTH
        or _KEY_PATTERN.fullmatch(key) is None
        or any(segment.startswith(".") for segment in key.split("/"))
    ):
        raise ValueError(f"invalid storage key: {key!r}")
    return key


def validate_prefix(prefix: str) -> str:
    """A folder of keys: a valid key followed by ``/`` (so ``generations/1/`` never
    reaches ``generations/10/``)."""
    if not isinstance(prefix, str) or not prefix.endswith("/"):
        raise ValueError(f"invalid storage prefix (a folder ends with '/'): {prefix!r}")
    validate_key(prefix[:-1])
    return prefix


def _signature(key: str, expires: int, secret: str) -> str:
    message = f"{key}\n{expires}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify_signature(key: str, expires: int, sig: str, *, secret: str, now: float) -> bool:
    """Check a signed local file URL's ``expires`` and ``sig`` query parameters.

    ``now`` is passed in rather than read here so the API can use one clock per request and
    tests can move time. The digest comparison is constant-time so a caller cannot learn
    the signature byte by byte from response timings.
    """
    if now > expires:
        return False
    expected = _signature(key, expires, secret)
    try:
        return hmac.compare_digest(expected, sig)
    except TypeError:  # non-ASCII text in sig: certainly not ours
        return False


class LocalStorage:
    """Files under a folder, written atomically via temp file, fsync and rename.

    Every blocking filesystem call runs in a worker thread (one hop per chunk), so a slow
    disk delays only the coroutine that is reading or writing, never the event loop.
    """

    def __init__(self, root: Path, *, public_url: str, signing_secret: str) -> None:
        self.root = Path(root).resolve()
        self.public_url = public_url.rstrip("/")
        self._secret = signing_secret

    def path_for(self, key: str) -> Path:
        """The real file behind ``key``, for tools that need a path (ffmpeg input)."""
        return self.root / validate_key(key)

    async def write_stream(
        self, key: str, chunks: AsyncIterator[bytes], *, content_type: str
    ) -> int:
        """Write to a hidden temp file beside the target, then rename it over the target.

        Readers see the old object or the whole new one, never a prefix, because the rename
        is atomic within one directory. The data is fsynced before the rename (and the
        directory after it) so a crash cannot leave a renamed but empty file.

        Each chunk reopens the temp file for append without ``O_CREAT``: if this coroutine is
        cancelled while a worker thread is still writing, the cleanup below may unlink the
        temp file before that thread opens it, and its open then fails instead of silently
        recreating a stray file. Creation and the final rename are waited for even when
        cancelled, so the cleanup never runs before them.
        """
        del content_type  # a local file has no metadata; the file route guesses from the name
        target = self.path_for(key)
        temp = _temp_path(target)
        size = 0
        try:
            await run_to_completion(lambda: _create(temp))
            async for chunk in chunks:
                if chunk:
                    await asyncio.to_thread(_append, temp, chunk)
                    size += len(chunk)
            await run_to_completion(lambda: _commit(temp, target))
        except BaseException:
            # Synchronous on purpose: it is two quick syscalls and must still run when the
            # task is being cancelled (an await here could be interrupted again).
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            raise
        return size

    async def write_bytes(self, key: str, data: bytes, *, content_type: str) -> int:
        return await self.write_stream(key, _single(data), content_type=content_type)

    def read_stream(self, key: str) -> AsyncIterator[bytes]:
        """Yield the file in CHUNK_SIZE pieces, each read in a worker thread.

        An invalid key fails here, at once; a missing file raises ObjectNotFound on the first
        iteration (checking now would block the loop and could still race a delete).
        """
        return self._iter_file(key, self.path_for(key))

    async def _iter_file(self, key: str, path: Path) -> AsyncIterator[bytes]:
        # The handle is buffered: its internal lock makes ``close`` wait for a read that is
        # still running in a worker thread after a cancellation, instead of racing it.
        try:
            handle = await asyncio.to_thread(path.open, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFound(key) from exc
        try:
            while chunk := await asyncio.to_thread(handle.read, CHUNK_SIZE):
                yield chunk
        finally:
            handle.close()

    async def read_bytes(self, key: str) -> bytes:
        path = self.path_for(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFound(key) from exc

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.path_for(key).is_file)

    async def size(self, key: str) -> int:
        path = self.path_for(key)
        try:
            info = await asyncio.to_thread(path.stat)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise ObjectNotFound(key) from exc
        if not stat.S_ISREG(info.st_mode):
            raise ObjectNotFound(key)
        return info.st_size

    async def delete(self, key: str) -> None:
        path = self.path_for(key)
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            await asyncio.to_thread(path.unlink)
        await asyncio.to_thread(self._prune, path.parent)

    async def delete_prefix(self, prefix: str) -> int:
        folder = self.root / validate_prefix(prefix)[:-1]
        return await asyncio.to_thread(self._delete_tree, folder)

    def _delete_tree(self, folder: Path) -> int:
        if not folder.is_dir():
            return 0
        files = [p for p in folder.rglob("*") if p.is_file() or p.is_symlink()]
        for path in files:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
            with contextlib.suppress(OSError):
                sub.rmdir()
        self._prune(folder)
        return len(files)

    def _prune(self, folder: Path) -> None:
        """Remove the folders a delete left empty, up to ``root``: like GCS, where a
        "folder" exists only while an object's name has it as a prefix."""
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()  # only ever succeeds on an empty folder
            except OSError:
                return
            folder = folder.parent

    def signed_url(
        self, key: str, *, expires_in: timedelta, content_type: str | None = None
    ) -> str:
        """A URL to the API's file route, valid until ``now + expires_in``.

        ``content_type`` is not signed: the route serves the file with the type implied by
        its name, which is what the writer chose anyway.
        """
        del content_type
        validate_key(key)
        expires = int(time.time() + expires_in.total_seconds())
        sig = _signature(key, expires, self._secret)
        return f"{self.public_url}/v1/files/{key}?expires={expires}&sig={sig}"


async def _single(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def run_to_completion(step: Callable[[], _T], *, executor: Executor | None = None) -> _T:
    """Run the publishing step of a write (rename, GCS finalise) in a thread, to the end.

    If cancellation abandoned the thread mid-step, the object could appear *after* the
    caller had given up and cleaned up. Waiting for the step (one request or one rename)
    keeps what the caller believes in line with what is stored; the cancellation is
    re-raised afterwards. ``executor``: the thread(s) to run it in, else asyncio's default.
    """
    future: asyncio.Future[_T]
    if executor is None:
        future = asyncio.ensure_future(asyncio.to_thread(step))
    else:
        future = asyncio.get_running_loop().run_in_executor(executor, step)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await future
        raise


def _temp_path(target: Path) -> Path:
    # Named here, before any I/O, so the cleanup knows it even if creation is interrupted.
    # The name is shortened to stay within the 255-byte file-name limit.
    return target.with_name(f".{target.name[:100]}.{secrets.token_hex(8)}{_TEMP_SUFFIX}")


def _create(temp: Path) -> None:
    temp.parent.mkdir(parents=True, exist_ok=True)
    # 0o666 and the process umask, like any ordinary new file (mkstemp would force 0o600).
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def _append(temp: Path, chunk: bytes) -> None:
    fd = os.open(temp, os.O_WRONLY | os.O_APPEND)
    try:
        view = memoryview(chunk)
        while view:
            written = os.write(fd, view)
            view = view[written:]
    finally:
        os.close(fd)


def _commit(temp: Path, target: Path) -> None:
    fd = os.open(temp, os.O_WRONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, target)
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
