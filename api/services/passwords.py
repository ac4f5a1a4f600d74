"""Argon2 hashing with a bound on how much runs at once.

Argon2 is deliberately slow (tens of milliseconds of CPU and 64 MiB of memory per
call). Run without a bound, a burst of logins fills every thread and every core, and
everything else in the process waits behind it; run while a pooled database
connection is checked out, the same burst starves the pool. So hashing happens with no
connection held, in at most ``concurrency`` threads at a time; a burst queues here, and a
request that has waited ``max_wait`` seconds is answered 503 with Retry-After instead.
"""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from api.services.errors import Busy


class HashingBusy(Busy):
    """Too many password checks are waiting; the caller should retry shortly."""

    def __init__(self) -> None:
        super().__init__("Too many sign-ins at once; try again in a moment.", retry_after=1)


class Passwords:
    def __init__(self, *, concurrency: int, max_wait: float) -> None:
        self._hasher = PasswordHasher()
        self._slots = asyncio.Semaphore(concurrency)
        self._max_wait = max_wait
        # Verified against when the email is unknown, so both failures cost the same.
        self._dummy = self._hasher.hash("not-a-real-password")

    async def _slot(self) -> None:
        try:
            await asyncio.wait_for(self._slots.acquire(), self._max_wait)
        except TimeoutError as err:
            raise HashingBusy from err

    async def hash(self, password: str) -> str:
        await self._slot()
        try:
            return await asyncio.to_thread(self._hasher.hash, password)
        finally:
            self._slots.release()

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Whether ``password`` matches; ``None`` (no such user) costs the same as a miss."""
        await self._slot()
        try:
            await asyncio.to_thread(self._hasher.verify, password_hash or self._dummy, password)
        except (VerificationError, InvalidHashError):
            return False
        finally:
            self._slots.release()
        return password_hash is not None

    def needs_rehash(self, password_hash: str) -> bool:
        return self._hasher.check_needs_rehash(password_hash)
