"""Recovery for generations that were charged but never started.

The API charges a token and records the generation in one transaction, then starts the
workflow. If the process dies between the two, the generation stays ``queued`` with its
token spent and nothing running. A retried request with the same Idempotency-Key starts
it; this sweeper covers every other case. Every API process runs it, but a PostgreSQL
advisory lock lets only one sweep at a time. Starting is safe to repeat (the workflow id
is the generation id), so a generation whose workflow did start but has not yet reported
is left as it is; if Temporal refuses the start, the token is refunded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from typing import Any

from psycopg_pool import AsyncConnectionPool
from temporalio.client import Client

from api.errors import Unavailable
from api.generations import start_or_refund
from infra.database import records
from infra.settings import Settings

log = logging.getLogger("bitbuddies.sweeper")

SWEEP_LOCK = 0x6269_7473  # pg_try_advisory_lock key: one sweeper at a time


async def sweep_once(db: AsyncConnectionPool[Any], temporal: Client, settings: Settings) -> int:
    """Start every stale queued generation; return how many were handled."""
    async with db.connection() as conn:
        cur = await conn.execute("SELECT pg_try_advisory_lock(%s) AS locked", (SWEEP_LOCK,))
        row = await cur.fetchone()
        if not (row and row["locked"]):
            return 0
        try:
            stale = await records.stale_queued_generations(
                conn, timedelta(seconds=settings.stale_queued_seconds)
            )
            for generation in stale:
                context = {"generation_id": generation.id, "user_id": generation.user_id}
                log.warning("starting a generation left queued", extra=context)
                # Unavailable: start_or_refund refunded it and recorded the failure.
                with contextlib.suppress(Unavailable):
                    await start_or_refund(conn, temporal, settings, generation)
            return len(stale)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (SWEEP_LOCK,))


async def run_sweeper(db: AsyncConnectionPool[Any], temporal: Client, settings: Settings) -> None:
    """Sweep every ``sweep_interval_seconds`` until cancelled."""
    while True:
        try:
            await sweep_once(db, temporal, settings)
        except Exception:
            log.exception("sweep failed; trying again next interval")
        await asyncio.sleep(settings.sweep_interval_seconds)
