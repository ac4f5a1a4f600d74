"""Provider concurrency: at most N jobs in flight per model, across every workflow and
every worker, from submit until the result is fetched.

The design card asks for an ``lru_cache``d semaphore, and `get_globally_cached_semaphore`
is exactly that: one object per (name, max_concurrency) per process. But an in-memory
semaphore cannot do the job in Temporal's Python SDK (see FACTS.md: the workflow sandbox
re-imports modules per run, each workflow is its own event loop, and a worker killed
mid-job would take its permits with it). So the object the cache returns is a handle on
*leases* stored in PostgreSQL: acquired by the submit activity (keyed by the step's
`workflow.uuid4()` idempotency key, so a retry re-finds its own lease), renewed by every
poll heartbeat, released by fetch or by the workflow's cleanup. A lease that nobody
renews - its workflow was terminated - expires after its TTL, so no permit is lost
forever. Nothing here runs in workflow code, so nothing can break replay.
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
        (migration 0002_acquire_permit.sql).
        """
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT acquire_provider_permit(%s, %s, %s, %s) AS ok",
                (self.name, holder, ttl, self.max_concurrency),
            )
            row = await cur.fetchone()
        return bool(row and row["ok"])

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

    async def renew(self, pool: AsyncConnectionPool[Any], holder: str, ttl: timedelta) -> bool:
        async with pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE provider_permits SET expires_at = now() + %s"
                " WHERE limiter = %s AND holder = %s RETURNING holder",
                (ttl, self.name, holder),
            )
            return await cur.fetchone() is not None

    async def release(self, pool: AsyncConnectionPool[Any], holder: str) -> None:
        """Idempotent."""
        async with pool.connection() as conn:
            await conn.execute(
                "DELETE FROM provider_permits WHERE limiter = %s AND holder = %s",
                (self.name, holder),
            )

    async def held(self, pool: AsyncConnectionPool[Any]) -> int:
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) AS held FROM provider_permits"
                " WHERE limiter = %s AND expires_at >= now()",
                (self.name,),
            )
            row = await cur.fetchone()
            return int(row["held"]) if row else 0


@cache
def get_globally_cached_semaphore(*, name: str, max_concurrency: int) -> ProviderSemaphore:
    """The card's lru_cached semaphore: one handle per (name, max_concurrency) per process."""
    return ProviderSemaphore(name=name, max_concurrency=max_concurrency)
