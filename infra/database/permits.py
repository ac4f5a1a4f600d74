"""Every SQL query about provider permits (the leases behind the model concurrency cap,
activities/permits.py) and the provider jobs submitted under them. Functions take a
connection so callers own the transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from infra.database.records import Conn

# --- leases -------------------------------------------------------------------------


async def acquire(conn: Conn, limiter: str, holder: str, ttl: timedelta, max_held: int) -> bool:
    """Take a lease for ``holder`` (or renew the one it has); False when all are taken.
    The check-and-insert runs inside PostgreSQL, serialised per limiter (the
    ``acquire_provider_permit`` function, last defined in migration 0005)."""
    cur = await conn.execute(
        "SELECT acquire_provider_permit(%s, %s, %s, %s) AS ok", (limiter, holder, ttl, max_held)
    )
    row = await cur.fetchone()
    return bool(row and row["ok"])


async def mark_submitted(conn: Conn, limiter: str, holder: str, generation_id: str) -> bool:
    cur = await conn.execute(
        "UPDATE provider_permits SET submitted_at = coalesce(submitted_at, now()),"
        " generation_id = %s WHERE limiter = %s AND holder = %s RETURNING holder",
        (generation_id, limiter, holder),
    )
    return await cur.fetchone() is not None


async def reclaim(
    conn: Conn, limiter: str, holder: str, generation_id: str, ttl: timedelta
) -> bool:
    """Put a submitted lease back, above the cap if need be, while its generation is open
    (FOR SHARE waits for a transaction that is closing it)."""
    cur = await conn.execute(
        "INSERT INTO provider_permits"
        " (limiter, holder, expires_at, submitted_at, generation_id)"
        " SELECT %s, %s, now() + %s, now(), g.id FROM generations g"
        " WHERE g.id = %s AND g.status IN ('queued', 'running') FOR SHARE"
        " ON CONFLICT (limiter, holder) DO UPDATE"
        " SET submitted_at = coalesce(provider_permits.submitted_at, now())"
        " RETURNING holder",
        (limiter, holder, ttl, generation_id),
    )
    return await cur.fetchone() is not None


async def renew(conn: Conn, limiter: str, holder: str, ttl: timedelta) -> bool:
    cur = await conn.execute(
        "UPDATE provider_permits SET expires_at = now() + %s"
        " WHERE limiter = %s AND holder = %s RETURNING holder",
        (ttl, limiter, holder),
    )
    return await cur.fetchone() is not None


async def release(conn: Conn, limiter: str, holder: str) -> None:
    await conn.execute(
        "DELETE FROM provider_permits WHERE limiter = %s AND holder = %s", (limiter, holder)
    )


async def held(conn: Conn, limiter: str) -> int:
    """Leases that count against the cap: unexpired, submitted, or with a job recorded."""
    cur = await conn.execute(
        "SELECT count(*) AS held FROM provider_permits p"
        " WHERE p.limiter = %s AND (p.expires_at >= now() OR p.submitted_at IS NOT NULL"
        " OR EXISTS (SELECT 1 FROM provider_jobs j WHERE j.idempotency_key = p.holder))",
        (limiter,),
    )
    row = await cur.fetchone()
    return int(row["held"]) if row else 0


# --- provider jobs --------------------------------------------------------------------


async def record_job(
    conn: Conn, idempotency_key: str, generation_id: str, step: str, app: str, request_id: str
) -> None:
    """The job a step's submit created, under the step's key (once)."""
    await conn.execute(
        "INSERT INTO provider_jobs (idempotency_key, generation_id, step, app, request_id)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (idempotency_key, generation_id, step, app, request_id),
    )


async def job_request_id(conn: Conn, idempotency_key: str) -> str | None:
    """The provider's id of the job submitted under a step's key, if one was."""
    cur = await conn.execute(
        "SELECT request_id FROM provider_jobs WHERE idempotency_key = %s", (idempotency_key,)
    )
    row = await cur.fetchone()
    return str(row["request_id"]) if row else None


# --- the permits of ended generations (housekeeping) --------------------------------


async def ended_generations_holding_permits(conn: Conn) -> list[UUID]:
    """Generations that have ended while a provider permit is still held for them (by a
    lease marked with the generation, or through the job recorded under its holder)."""
    cur = await conn.execute(
        "SELECT DISTINCT g.id FROM provider_permits p"
        " LEFT JOIN provider_jobs j ON j.idempotency_key = p.holder"
        " JOIN generations g ON g.id = coalesce(p.generation_id, j.generation_id)"
        " WHERE g.status IN ('completed', 'failed', 'cancelled')"
    )
    return [row["id"] for row in await cur.fetchall()]


@dataclass(frozen=True)
class HeldPermit:
    holder: str
    app: str | None  # None: no job recorded under it (the worker died before recording)
    request_id: str | None


async def generation_permits(conn: Conn, generation_id: UUID) -> list[HeldPermit]:
    """The provider permits held for a generation's jobs, each with its recorded job.

    A lease marked submitted names its generation (its job may have been sent but not
    recorded, if the worker died in between); a lease from before that mark existed is
    found through the recorded job."""
    cur = await conn.execute(
        "SELECT p.holder, j.app, j.request_id FROM provider_permits p"
        " LEFT JOIN provider_jobs j ON j.idempotency_key = p.holder"
        " WHERE p.generation_id = %s OR j.generation_id = %s",
        (generation_id, generation_id),
    )
    return [HeldPermit(**row) for row in await cur.fetchall()]


async def release_permits(conn: Conn, holders: list[str]) -> int:
    cur = await conn.execute("DELETE FROM provider_permits WHERE holder = ANY(%s)", (holders,))
    return cur.rowcount


@dataclass(frozen=True)
class ProviderJob:
    idempotency_key: str
    step: str
    app: str
    request_id: str
    created_at: datetime


async def jobs_for_generation(conn: Conn, generation_id: UUID) -> list[ProviderJob]:
    """Every provider job submitted for a generation, in the order they were recorded
    (``bitbuddies inspect``)."""
    cur = await conn.execute(
        "SELECT idempotency_key, step, app, request_id, created_at FROM provider_jobs"
        " WHERE generation_id = %s ORDER BY created_at, idempotency_key",
        (generation_id,),
    )
    return [ProviderJob(**row) for row in await cur.fetchall()]


# --- metrics (infra/metrics.py) -------------------------------------------------------


async def in_use_by_model(conn: Conn) -> dict[str, int]:
    """Leases that count against each model's cap (as ``held`` counts them), by limiter
    (the model's app); a model with none is absent."""
    cur = await conn.execute(
        "SELECT p.limiter, count(*) AS held FROM provider_permits p"
        " WHERE p.expires_at >= now() OR p.submitted_at IS NOT NULL"
        " OR EXISTS (SELECT 1 FROM provider_jobs j WHERE j.idempotency_key = p.holder)"
        " GROUP BY p.limiter"
    )
    return {row["limiter"]: int(row["held"]) for row in await cur.fetchall()}


async def job_age_seconds(conn: Conn, idempotency_key: str) -> float | None:
    """Seconds since the job submitted under a step's key was recorded (just after its
    submit), by the database's clock; None when no job was."""
    cur = await conn.execute(
        "SELECT extract(epoch FROM clock_timestamp() - created_at)::float8 AS age"
        " FROM provider_jobs WHERE idempotency_key = %s",
        (idempotency_key,),
    )
    row = await cur.fetchone()
    return float(row["age"]) if row else None
