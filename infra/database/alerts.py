"""Every SQL query about owner alerts (the ``alerts`` table, migration 0015; the rules are
in infra/alerts.py). Functions take a connection so callers own the transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal
from uuid import UUID

from infra.database.records import Conn

Delivery = Literal["pending", "sent", "logged", "suppressed"]

_COLUMNS = (
    "id, source_key, kind, dedupe_key, title, message, user_id, generation_id, workflow_id,"
    " run_id, step, error_class, refunded, link, priority, delivery, digest_count,"
    " digested_in, created_at, delivered_at"
)


@dataclass(frozen=True)
class NewAlert:
    source_key: str
    kind: str
    dedupe_key: str
    title: str
    message: str
    priority: int
    user_id: UUID | None = None
    generation_id: UUID | None = None
    workflow_id: str | None = None
    run_id: str | None = None
    step: str | None = None
    error_class: str | None = None
    refunded: bool | None = None
    link: str | None = None
    digest_count: int | None = None


@dataclass(frozen=True)
class Alert:
    id: int
    source_key: str
    kind: str
    dedupe_key: str
    title: str
    message: str
    user_id: UUID | None
    generation_id: UUID | None
    workflow_id: str | None
    run_id: str | None
    step: str | None
    error_class: str | None
    refunded: bool | None
    link: str | None
    priority: int
    delivery: Delivery
    digest_count: int | None
    digested_in: int | None
    created_at: datetime
    delivered_at: datetime | None


@dataclass(frozen=True)
class SuppressedGroup:
    """Suppressed alerts of one dedupe key not yet counted in a digest."""

    dedupe_key: str
    kind: str
    step: str | None
    error_class: str | None
    count: int
    first_at: datetime
    ids: list[int]


def _alert(row: dict[str, Any]) -> Alert:
    return Alert(**row)


async def by_source(conn: Conn, source_key: str) -> Alert | None:
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM alerts WHERE source_key = %s",
        (source_key,),
    )
    row = await cur.fetchone()
    return _alert(row) if row else None


async def lock_dedupe_key(conn: Conn, dedupe_key: str) -> None:
    """Serialise deciding on one dedupe key until the transaction ends, so two alerts of
    one group at once cannot both be sent."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (dedupe_key,))


async def lead_within(conn: Conn, dedupe_key: str, window: timedelta) -> bool:
    """Whether an alert of this key (not a digest) was delivered, or is being, within
    ``window``."""
    cur = await conn.execute(
        "SELECT 1 FROM alerts WHERE dedupe_key = %s AND digest_count IS NULL"
        " AND delivery IN ('pending', 'sent', 'logged') AND created_at > now() - %s LIMIT 1",
        (dedupe_key, window),
    )
    return await cur.fetchone() is not None


async def insert(conn: Conn, alert: NewAlert, delivery: Delivery) -> Alert:
    cur = await conn.execute(
        "INSERT INTO alerts (source_key, kind, dedupe_key, title, message, user_id,"
        " generation_id, workflow_id, run_id, step, error_class, refunded, link, priority,"
        " delivery, digest_count)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        f" RETURNING {_COLUMNS}",
        (
            alert.source_key,
            alert.kind,
            alert.dedupe_key,
            alert.title,
            alert.message,
            alert.user_id,
            alert.generation_id,
            alert.workflow_id,
            alert.run_id,
            alert.step,
            alert.error_class,
            alert.refunded,
            alert.link,
            alert.priority,
            delivery,
            alert.digest_count,
        ),
    )
    row = await cur.fetchone()
    assert row is not None
    return _alert(row)


async def mark_delivered(conn: Conn, alert_id: int, delivery: Delivery) -> None:
    await conn.execute(
        "UPDATE alerts SET delivery = %s, delivered_at = now() WHERE id = %s",
        (delivery, alert_id),
    )


async def suppressed_groups(conn: Conn) -> list[SuppressedGroup]:
    cur = await conn.execute(
        "SELECT dedupe_key, min(kind) AS kind, min(step) AS step,"
        " min(error_class) AS error_class, count(*) AS count, min(created_at) AS first_at,"
        " array_agg(id ORDER BY id) AS ids FROM alerts"
        " WHERE delivery = 'suppressed' AND digested_in IS NULL"
        " GROUP BY dedupe_key ORDER BY min(created_at)"
    )
    return [SuppressedGroup(**row) for row in await cur.fetchall()]


async def undigested_ids(conn: Conn, dedupe_key: str) -> list[int]:
    cur = await conn.execute(
        "SELECT id FROM alerts WHERE dedupe_key = %s AND delivery = 'suppressed'"
        " AND digested_in IS NULL ORDER BY id",
        (dedupe_key,),
    )
    return [row["id"] for row in await cur.fetchall()]


async def mark_digested(conn: Conn, ids: list[int], digest_id: int) -> int:
    """Count suppressed alerts in a digest (take the dedupe key's lock first)."""
    cur = await conn.execute(
        "UPDATE alerts SET digested_in = %s WHERE id = ANY(%s) AND digested_in IS NULL",
        (digest_id, ids),
    )
    return cur.rowcount


async def undelivered(conn: Conn, older_than: timedelta, *, limit: int = 100) -> list[Alert]:
    """Alerts recorded but never delivered (their sender died or failed)."""
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM alerts WHERE delivery = 'pending'"
        " AND created_at < now() - %s ORDER BY id LIMIT %s",
        (older_than, limit),
    )
    return [_alert(row) for row in await cur.fetchall()]


async def recent(conn: Conn, since: timedelta, *, limit: int = 50) -> list[Alert]:
    """The newest alerts first."""
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM alerts WHERE created_at > now() - %s ORDER BY id DESC LIMIT %s",
        (since, limit),
    )
    return [_alert(row) for row in await cur.fetchall()]


async def for_generation(conn: Conn, generation_id: UUID) -> list[Alert]:
    """The alerts recorded about one generation, oldest first (``bitbuddies inspect``)."""
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM alerts WHERE generation_id = %s ORDER BY id",
        (generation_id,),
    )
    return [_alert(row) for row in await cur.fetchall()]
