"""Every SQL query about provider costs (the ``provider_costs`` table, migration 0020):
what each fetched provider job cost, recorded once per job, and the sums the owner reads
(``bitbuddies costs``, ``bitbuddies inspect``) and the daily spend alert checks. Days are
UTC days. Functions take a connection so callers own the transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from uuid import UUID

from psycopg import sql

from infra.database.records import Conn


@dataclass(frozen=True)
class Recorded:
    inserted: bool  # False: the job's cost was recorded before (a retried fetch)
    day: date  # the UTC day its cost counts in


async def record(
    conn: Conn,
    *,
    request_id: str,
    idempotency_key: str,
    generation_id: str,
    step: str,
    app: str,
    cost_usd: float,
) -> Recorded:
    """Record a fetched job's cost, once per request id. Its seconds run from the job's
    submission (its ``provider_jobs`` row, by the step's key) to now, by the database's
    clock. A generation already erased (its account deleted while the job ran) is not
    named: the cost is recorded all the same, as anonymous spend."""
    cur = await conn.execute(
        "INSERT INTO provider_costs (request_id, generation_id, step, app, seconds, cost_usd)"
        " VALUES (%s, (SELECT id FROM generations WHERE id = %s), %s, %s,"
        "  coalesce((SELECT greatest(0, extract(epoch FROM clock_timestamp() - created_at))"
        "   FROM provider_jobs WHERE idempotency_key = %s), 0), %s)"
        " ON CONFLICT (request_id) DO NOTHING RETURNING recorded_at",
        (request_id, generation_id, step, app, idempotency_key, cost_usd),
    )
    row = await cur.fetchone()
    if row is not None:
        return Recorded(True, _utc_day(row["recorded_at"]))
    cur = await conn.execute(
        "SELECT recorded_at FROM provider_costs WHERE request_id = %s", (request_id,)
    )
    again = await cur.fetchone()
    assert again is not None  # the conflicting row: rows are never deleted
    return Recorded(False, _utc_day(again["recorded_at"]))


def _utc_day(moment: datetime) -> date:
    return moment.astimezone(UTC).date()


def _bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(), UTC)
    return start, start + timedelta(days=1)


@dataclass(frozen=True)
class Sum:
    key: str  # a step or an app, as grouped
    jobs: int
    cost_usd: Decimal


async def day_total(conn: Conn, day: date) -> Decimal:
    """The day's spend (UTC), every job of it."""
    cur = await conn.execute(
        "SELECT coalesce(sum(cost_usd), 0) AS total FROM provider_costs"
        " WHERE recorded_at >= %s AND recorded_at < %s",
        _bounds(day),
    )
    row = await cur.fetchone()
    return Decimal(row["total"]) if row else Decimal(0)


async def day_top(conn: Conn, day: date, by: str, *, limit: int) -> list[Sum]:
    """The day's biggest spenders by ``step`` or ``app``, biggest first."""
    column = sql.Identifier({"step": "step", "app": "app"}[by])
    query = sql.SQL(
        "SELECT {column} AS key, count(*) AS jobs, sum(cost_usd) AS cost_usd"
        " FROM provider_costs WHERE recorded_at >= %s AND recorded_at < %s"
        " GROUP BY {column} ORDER BY sum(cost_usd) DESC, {column} LIMIT %s"
    ).format(column=column)
    cur = await conn.execute(query, (*_bounds(day), limit))
    return [Sum(**row) for row in await cur.fetchall()]


@dataclass(frozen=True)
class DaySum:
    day: date
    step: str
    app: str
    jobs: int
    cost_usd: Decimal
    seconds: float  # summed submission-to-fetch time


async def per_day(conn: Conn, days: int) -> list[DaySum]:
    """The last ``days`` UTC days (today included, by the database's clock), per day,
    step and endpoint: newest day first, then the costliest."""
    cur = await conn.execute(
        "SELECT (recorded_at AT TIME ZONE 'UTC')::date AS day, step, app, count(*) AS jobs,"
        " sum(cost_usd) AS cost_usd, sum(seconds) AS seconds FROM provider_costs"
        " WHERE recorded_at >= (date_trunc('day', now() AT TIME ZONE 'UTC')"
        "  - %s * interval '1 day') AT TIME ZONE 'UTC'"
        " GROUP BY 1, 2, 3 ORDER BY 1 DESC, 5 DESC, 2, 3",
        (days - 1,),
    )
    return [DaySum(**row) for row in await cur.fetchall()]


@dataclass(frozen=True)
class PerGeneration:
    generations: int  # generations with at least one cost (erased ones not counted)
    cost_usd: Decimal  # their spend
    anonymous_usd: Decimal  # spend of jobs whose generation was erased


async def per_generation(conn: Conn, days: int) -> PerGeneration:
    """Spend per generation over the last ``days`` UTC days, for its average."""
    cur = await conn.execute(
        "SELECT count(DISTINCT generation_id) AS generations,"
        " coalesce(sum(cost_usd) FILTER (WHERE generation_id IS NOT NULL), 0) AS cost_usd,"
        " coalesce(sum(cost_usd) FILTER (WHERE generation_id IS NULL), 0) AS anonymous_usd"
        " FROM provider_costs"
        " WHERE recorded_at >= (date_trunc('day', now() AT TIME ZONE 'UTC')"
        "  - %s * interval '1 day') AT TIME ZONE 'UTC'",
        (days - 1,),
    )
    row = await cur.fetchone()
    assert row is not None  # an aggregate always answers
    return PerGeneration(**row)


@dataclass(frozen=True)
class JobCost:
    request_id: str
    step: str
    app: str
    seconds: float
    cost_usd: Decimal
    recorded_at: datetime


async def for_generation(conn: Conn, generation_id: UUID) -> list[JobCost]:
    """A generation's recorded job costs, in the order they were recorded."""
    cur = await conn.execute(
        "SELECT request_id, step, app, seconds, cost_usd, recorded_at FROM provider_costs"
        " WHERE generation_id = %s ORDER BY recorded_at, id",
        (generation_id,),
    )
    return [JobCost(**row) for row in await cur.fetchall()]
