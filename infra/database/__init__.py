"""PostgreSQL access: one async pool per process, and forward-only SQL migrations."""

from __future__ import annotations

import argparse
import asyncio
import logging
from importlib.resources import files
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger("bitbuddies.database")
MIGRATION_LOCK = 0x6269_7462  # pg_advisory_lock key: one migrator at a time


def open_pool(database_url: str, *, min_size: int = 1, max_size: int = 10) -> AsyncConnectionPool:
    """An opened-later pool (call ``await pool.open()``); rows come back as dicts.

    Connections autocommit: a multi-statement change says so with ``conn.transaction()``,
    so nothing is ever left uncommitted by accident (a workflow must never start before
    the row it reads is committed).

    Each connection is checked as it is handed out (``_Checked``): a connection
    PostgreSQL closed meanwhile (a restart, a failover, ``pg_terminate_backend``) is
    dropped and another one given, instead of failing the request or activity that drew
    it (tests/billing/test_crashes.py)."""
    checked = _Checked()
    pool: AsyncConnectionPool = AsyncConnectionPool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        open=False,
        kwargs={"row_factory": dict_row, "autocommit": True},
        check=checked,
    )
    checked.pool = pool
    return pool


class _Checked:
    """The pool's check of a connection it hands out: one empty query. A dead one means
    PostgreSQL dropped every connection of ours at once (a restart or failover), so the
    check also sweeps the idle ones (``pool.check()``, in the background, one sweep at
    a time). Without the sweep each dead connection is found by the next caller, and
    psycopg_pool waits 1 s, then 2, 4, 8 ... between them: with six dead ones the caller
    gives up (PoolTimeout) after 30 s."""

    def __init__(self) -> None:
        self.pool: AsyncConnectionPool[Any] | None = None
        self._sweep: asyncio.Task[None] | None = None

    async def __call__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        try:
            await AsyncConnectionPool.check_connection(conn)
        except Exception:
            if self.pool is not None and (self._sweep is None or self._sweep.done()):
                self._sweep = asyncio.create_task(self._swept(self.pool))
            raise

    @staticmethod
    async def _swept(pool: AsyncConnectionPool[Any]) -> None:
        try:
            await pool.check()
        except Exception:  # a pool closing meanwhile: nothing left to sweep
            log.debug("the pool's sweep of dead connections stopped", exc_info=True)


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
