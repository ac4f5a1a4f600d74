"""Provider concurrency: at most N jobs in flight per model, across every workflow and
every worker, from submit until the result is fetched.

The design card asks for an ``lru_cache``d semaphore, and `get_globally_cached_semaphore`
is exactly that: one object per (name, max_concurrency) per process. But an in-memory
semaphore cannot do the job in Temporal's Python SDK: the workflow sandbox re-imports
modules for each run, every worker process has its own memory, and a worker killed
mid-job would take its permits with it. So the object the cache returns is a handle on
*leases* stored in PostgreSQL, keyed by the step's `workflow.uuid4()` idempotency key
(so a retry re-finds its own lease):

- taken by the submit activity (`acquire`), with a TTL;
- marked submitted just before the job is sent (`mark_submitted`). From then on the job
  may be in flight at the provider whatever happens to our workers (a worker can die
  after the request left), so the lease no longer expires by time: it ends only when it
  is released - by fetch once the result is ours, by the workflow's cleanup after it
  cancelled the job, by a refused submit, or by the sweeper settling an ended workflow
  (which also cancels its jobs). A poll's `renew` only checks that the lease is there.
- A lease taken but never marked (the worker died between acquire and submit) expires
  after its TTL; a retry of the same submit re-finds it if it is still there.

Nothing here runs in workflow code, so nothing can break replay.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from typing import Any

from psycopg_pool import AsyncConnectionPool

from infra.database import permits

ACQUIRE_POLL_SECONDS = 0.25


@dataclass(frozen=True)
class ProviderSemaphore:
    name: str
    max_concurrency: int

    async def try_acquire(
        self, pool: AsyncConnectionPool[Any], holder: str, ttl: timedelta
    ) -> bool:
        """Take a lease for ``holder`` (or renew the one it has); False when all are taken.

        One round trip: the check-and-insert runs inside PostgreSQL, serialised per limiter
        (the ``acquire_provider_permit`` function, last defined in migration
        0005_permit_leases.sql).
        """
        async with pool.connection() as conn:
            return await permits.acquire(conn, self.name, holder, ttl, self.max_concurrency)

    async def acquire(
        self,
        pool: AsyncConnectionPool[Any],
        holder: str,
        ttl: timedelta,
        *,
        while_waiting: Callable[[], None] = lambda: None,
    ) -> None:
        """Wait for a lease, calling ``while_waiting`` (a heartbeat) between tries."""
        while not await self.try_acquire(pool, holder, ttl):
            while_waiting()
            await asyncio.sleep(ACQUIRE_POLL_SECONDS * (0.5 + random.random()))  # noqa: S311

    async def mark_submitted(
        self, pool: AsyncConnectionPool[Any], holder: str, generation_id: str
    ) -> bool:
        """Mark ``holder``'s lease as used for a submit, so it no longer expires by time;
        False when the lease is gone (it expired before this, on a very slow worker).

        Atomic against `acquire`'s removal of expired leases: either the removal ran
        first (nothing is marked, False) or the mark did (the removal skips the row)."""
        async with pool.connection() as conn:
            return await permits.mark_submitted(conn, self.name, holder, generation_id)

    async def reclaim(
        self, pool: AsyncConnectionPool[Any], holder: str, generation_id: str, ttl: timedelta
    ) -> bool:
        """Put back the submitted lease of a job known to be still in flight, even above
        the cap (the table must count every job in flight: new submits then wait until
        the count is under the cap again); False when the generation is settled.

        Only while the generation is open: the sweeper frees a settled generation's
        permits in the same transaction that closes it, and FOR SHARE waits for that
        transaction, so a lease it freed is never put back behind it."""
        async with pool.connection() as conn:
            return await permits.reclaim(conn, self.name, holder, generation_id, ttl)

    async def renew(self, pool: AsyncConnectionPool[Any], holder: str, ttl: timedelta) -> bool:
        """Extend ``holder``'s lease; False when it is gone (released by someone else)."""
        async with pool.connection() as conn:
            return await permits.renew(conn, self.name, holder, ttl)

    async def release(self, pool: AsyncConnectionPool[Any], holder: str) -> None:
        """Idempotent."""
        async with pool.connection() as conn:
            await permits.release(conn, self.name, holder)

    async def held(self, pool: AsyncConnectionPool[Any]) -> int:
        async with pool.connection() as conn:
            return await permits.held(conn, self.name)


@cache
def get_globally_cached_semaphore(*, name: str, max_concurrency: int) -> ProviderSemaphore:
    """The card's lru_cached semaphore: one handle per (name, max_concurrency) per process."""
    return ProviderSemaphore(name=name, max_concurrency=max_concurrency)
