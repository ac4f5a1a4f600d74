"""Every SQL query about provider webhook deliveries (the ``provider_webhooks`` table,
migration 0016; the rules are in api/services/providers.py). Functions take a connection
so callers own the transaction."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

from infra.database.records import Conn


async def record_delivery(conn: Conn, request_id: str, generation_id: UUID, ok: bool) -> bool:
    """Record the first delivery of a job's outcome: True if this is it, False for a
    repeat. A concurrent repeat waits on the first one's row and sees it once that
    commits (or takes its place if that rolls back)."""
    cur = await conn.execute(
        "INSERT INTO provider_webhooks (request_id, generation_id, ok) VALUES (%s, %s, %s)"
        " ON CONFLICT (request_id, ok) DO NOTHING RETURNING request_id",
        (request_id, generation_id, ok),
    )
    return await cur.fetchone() is not None


async def forget_deliveries(conn: Conn, older_than: timedelta) -> int:
    """Delete the records of deliveries received longer ago than ``older_than``."""
    cur = await conn.execute(
        "DELETE FROM provider_webhooks WHERE received_at < now() - %s", (older_than,)
    )
    return cur.rowcount
