"""Ledger charges per second on one PostgreSQL under concurrent clients, beside as many
bare balance updates in the same run.

Each client has its own connection and its own user (``--users`` fewer than clients
makes them share, down to one hot row). The ledger side runs ``ledger.charge`` in a
transaction per charge, each under its own key (a lookup by key, the guarded balance
update and the entry, in a savepoint, then the commit); the bare side runs
``UPDATE ... SET tokens = tokens - 1 WHERE user_id = ... AND tokens >= 1 RETURNING`` alone,
on a scratch table shaped like ``balances`` (so the ledger's invariant is not touched).
The two sides alternate in rounds. Afterwards the ledger's invariant is checked
(``ledger.check_invariant``). Only PostgreSQL is started, by infra/supervisor.py, with
durable commits unless ``--no-fsync`` (the test stack's setting).

    .venv/bin/python -m bench.ledger_charges [--clients 50] [--charges 5000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from billing import ledger
from infra import supervisor
from infra.database import migrate

Conn = psycopg.AsyncConnection[dict[str, Any]]


@contextlib.contextmanager
def postgres_only(*, fsync: bool) -> Iterator[str]:
    """PostgreSQL alone, migrated, on a free port in a temporary folder: its URL."""
    with tempfile.TemporaryDirectory(prefix="bitbuddies-bench-") as tmp:
        cfg = supervisor.StackConfig(
            data_dir=Path(tmp), ports=supervisor.Ports.random(), persistent=fsync
        )
        server = supervisor.postgres(cfg)
        server.start()
        try:
            supervisor.ensure_database(cfg)
            asyncio.run(migrate(cfg.database_url))
            yield cfg.database_url
        finally:
            server.stop()


async def _connect(url: str) -> Conn:
    return await psycopg.AsyncConnection.connect(url, autocommit=True, row_factory=dict_row)


async def _setup(url: str, users: int, charges: int) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """``users`` accounts with enough tokens, a generation row for every charge (the
    entry refers to it), and the bare side's table with the same balances."""
    ids = [uuid.uuid4() for _ in range(users)]
    generations = [uuid.uuid4() for _ in range(charges)]
    tokens = charges  # every user can pay for every charge: no refusal on either side
    async with await _connect(url) as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO users (id, email, password_hash)"
            " SELECT id, id::text || '@bench.invalid', 'x' FROM unnest(%s::uuid[]) AS id",
            (ids,),
        )
        for user_id in ids:
            await ledger.open_account(conn, user_id)
            await ledger.grant(conn, user_id, tokens, idempotency_key=f"bench:{user_id}")
        await conn.execute(
            "INSERT INTO generations (id, user_id, prompt, photo_key)"
            " SELECT g, (%s::uuid[])[1 + (n - 1) %% %s], 'bench', 'k'"
            " FROM unnest(%s::uuid[]) WITH ORDINALITY AS t(g, n)",
            (ids, users, generations),
        )
        await conn.execute(
            "CREATE TABLE bare_balances (user_id uuid PRIMARY KEY,"
            " tokens integer NOT NULL CHECK (tokens >= 0))"
        )
        await conn.execute(
            "INSERT INTO bare_balances SELECT user_id, tokens FROM balances"
            " WHERE user_id = ANY(%s)",
            (ids,),
        )
    return ids, generations


async def _run(
    url: str, clients: int, work: list[Any], step: Callable[[Conn, int, Any], Awaitable[None]]
) -> float:
    """Run ``step`` over ``work`` from ``clients`` connections at once; seconds taken
    from the first step to the last (connections are opened before)."""
    connections = [await _connect(url) for _ in range(clients)]
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for item in work:
        queue.put_nowait(item)

    async def client(index: int, conn: Conn) -> None:
        while True:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await step(conn, index, item)

    try:
        start = time.perf_counter()
        await asyncio.gather(*(client(i, c) for i, c in enumerate(connections)))
        return time.perf_counter() - start
    finally:
        for conn in connections:
            await conn.close()


async def bench(url: str, *, clients: int, charges: int, users: int, rounds: int) -> None:
    ids, generations = await _setup(url, users, charges * rounds)
    # (user, generation) per charge; the bare side takes the same users in the same order.
    planned = [(ids[n % users], g) for n, g in enumerate(generations)]

    async def charge(conn: Conn, _: int, item: tuple[uuid.UUID, uuid.UUID]) -> None:
        user_id, generation_id = item
        async with conn.transaction():
            await ledger.charge(
                conn,
                user_id,
                idempotency_key=ledger.charge_key(generation_id),
                generation_id=generation_id,
            )

    async def bare(conn: Conn, _: int, item: tuple[uuid.UUID, uuid.UUID]) -> None:
        cur = await conn.execute(
            "UPDATE bare_balances SET tokens = tokens - 1 WHERE user_id = %s AND tokens >= 1"
            " RETURNING tokens",
            (item[0],),
        )
        assert await cur.fetchone() is not None

    ledger_seconds = bare_seconds = 0.0
    for r in range(rounds):
        batch = planned[r * charges : (r + 1) * charges]
        # Alternate which side goes first, so a busy moment on a shared machine, or a
        # warmer cache, does not favour one.
        order = [("ledger", charge), ("bare", bare)]
        if r % 2:
            order.reverse()
        for name, step in order:
            seconds = await _run(url, clients, batch, step)
            print(f"  round {r + 1}: {name:<6} {charges / seconds:8.0f}/s  ({seconds:.2f} s)")
            if name == "ledger":
                ledger_seconds += seconds
            else:
                bare_seconds += seconds

    total = charges * rounds
    ledger_rate, bare_rate = total / ledger_seconds, total / bare_seconds
    print()
    print(f"ledger.charge      {ledger_rate:8.0f} charges/s")
    print(f"bare UPDATE        {bare_rate:8.0f} updates/s")
    print(f"ratio              {bare_rate / ledger_rate:8.2f}x (bare / ledger)")

    async with await _connect(url) as conn:
        cur = await conn.execute("SELECT count(*) AS n FROM ledger_entries WHERE kind = 'charge'")
        row = await cur.fetchone()
        started = time.perf_counter()
        violations = await ledger.check_invariant(conn)
        took = time.perf_counter() - started
    assert row is not None
    print(f"charges recorded   {row['n']:8d} (expected {total})")
    if violations:
        print(f"invariant BROKEN ({took:.2f} s): {len(violations)} violation(s)")
        for violation in violations[:20]:
            print(f"  {violation}")
    else:
        print(f"invariant holds    (checked in {took * 1000:.0f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--clients", type=int, default=50, help="concurrent connections (50)")
    parser.add_argument("--charges", type=int, default=5000, help="per side per round (5000)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (2)")
    parser.add_argument(
        "--users", type=int, default=0, help="users charged (default: one per client)"
    )
    parser.add_argument(
        "--no-fsync", action="store_true", help="fsync and synchronous_commit off, as in tests"
    )
    args = parser.parse_args()
    users = args.users or args.clients
    with postgres_only(fsync=not args.no_fsync) as url:
        print(
            f"{args.clients} clients, {users} users, {args.charges} per side per round,"
            f" {args.rounds} rounds, {'no fsync' if args.no_fsync else 'durable commits'}"
        )
        asyncio.run(
            bench(url, clients=args.clients, charges=args.charges, users=users, rounds=args.rounds)
        )


if __name__ == "__main__":
    main()
