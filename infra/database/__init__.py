"""PostgreSQL access: one async pool per process, and forward-only SQL migrations."""

from __future__ import annotations

import argparse
import asyncio
from importlib.resources import files
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

MIGRATION_LOCK = 0x6269_7462  # pg_advisory_lock key: one migrator at a time


def open_pool(database_url: str, *, min_size: int = 1, max_size: int = 10) -> AsyncConnectionPool:
    """An opened-later pool (call ``await pool.open()``); rows come back as dicts.

    Connections autocommit: a multi-statement change says so with ``conn.transaction()``,
    so nothing is ever left uncommitted by accident (a workflow must never start before
    the row it reads is committed)."""
    return AsyncConnectionPool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        open=False,
        kwargs={"row_factory": dict_row, "autocommit": True},
    )


async def ping(pool: AsyncConnectionPool[Any]) -> None:
    """One round trip; raises when PostgreSQL cannot answer."""
    async with pool.connection() as conn:
        await conn.execute("SELECT 1")


def _migrations() -> list[tuple[str, str]]:
    folder = files("infra.database") / "migrations"
    scripts = [p for p in folder.iterdir() if p.name.endswith(".sql")]
    return sorted((p.name, p.read_text()) for p in scripts)


async def migrate(database_url: str) -> list[str]:
    """Apply pending migrations in order, each in its own transaction; return their names."""
    applied: list[str] = []
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur = await conn.execute("SELECT name FROM schema_migrations")
            done = {row[0] for row in await cur.fetchall()}
            for name, sql in _migrations():
                if name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql.encode())
                    await conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (name,))
                applied.append(name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return applied


def main() -> None:
    from infra.settings import get_settings

    parser = argparse.ArgumentParser(description="Apply database migrations.")
    parser.add_argument("command", choices=["migrate"])
    parser.parse_args()
    applied = asyncio.run(migrate(get_settings().database_url))
    print(f"migrations applied: {', '.join(applied) or 'none pending'}")


if __name__ == "__main__":
    main()
