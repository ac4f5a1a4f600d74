"""Every SQL query about pairing codes (the ``pairing_codes`` table, migration 0019; the
rules are in api/services/accounts.py). A code is stored only as its SHA-256. Functions
take a connection so callers own the transaction."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

from infra.database.records import Conn, token_digest


async def insert_code(conn: Conn, code: str, user_id: UUID, ttl: timedelta) -> datetime | None:
    """Store a new code; its expiry, or None when a live code has the same hash (the caller
    draws another). An expired code of the same hash, not yet swept, is replaced."""
    cur = await conn.execute(
        "INSERT INTO pairing_codes (code_hash, user_id, expires_at) VALUES (%s, %s, now() + %s)"
        " ON CONFLICT (code_hash) DO UPDATE"
        " SET user_id = EXCLUDED.user_id, created_at = now(), expires_at = EXCLUDED.expires_at"
        " WHERE pairing_codes.expires_at <= now()"
        " RETURNING expires_at",
        (token_digest(code), user_id, ttl),
    )
    row = await cur.fetchone()
    return row["expires_at"] if row else None


async def use_code(conn: Conn, code: str) -> UUID | None:
    """Use a live code up: it is deleted. Its user's id, or None when it was unknown,
    expired or used already (a concurrent use waits on the row, then finds it gone)."""
    cur = await conn.execute(
        "DELETE FROM pairing_codes WHERE code_hash = %s AND expires_at > now() RETURNING user_id",
        (token_digest(code),),
    )
    row = await cur.fetchone()
    return row["user_id"] if row else None
