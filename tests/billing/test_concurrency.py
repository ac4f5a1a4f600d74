"""The ledger under a burst through the whole stack: a balance of exactly 10 meets 50
concurrent POST /v1/generations, each with its own Idempotency-Key. Exactly 10 are
charged and started, 40 refused with 402, the balance ends at 0, and once the 10 end the
ledger's invariant holds. (Rate limits are off in the test stack.)"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import httpx
from psycopg_pool import AsyncConnectionPool

from billing import ledger
from tests.conftest import Stack
from tests.support.client import signup
from tests.support.faults import assert_ledger_consistent, finished
from tests.support.photos import photo

Pool = AsyncConnectionPool  # type: ignore[type-arg]
REQUESTS = 50
BALANCE = 10


async def test_fifty_concurrent_starts_against_ten_tokens_charge_exactly_ten(
    stack: Stack,
    http: httpx.AsyncClient,
    db: Pool,
    models: httpx.AsyncClient,  # resets the model server: no fault left by another test
) -> None:
    user = await signup(http)  # 3 free tokens
    command = [str(Path(sys.executable).with_name("bitbuddies")), "grant", user.email, "7"]
    topped = subprocess.run(
        [*command, "--reason", "concurrency test", "--key", f"concurrency-{user.id}"],
        env=stack.cfg.app_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert topped.returncode == 0, topped.stderr
    assert await user.balance() == BALANCE
    picture = photo("astronaut.png")
    gate = asyncio.Event()

    async def start(n: int) -> httpx.Response:
        await gate.wait()
        return await user.generate(picture, idempotency_key=f"burst-{n}-{uuid.uuid4().hex}")

    async with httpx.AsyncClient(
        base_url=stack.cfg.api_url,
        timeout=120.0,
        limits=httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=REQUESTS),
    ) as burst:
        user.http = burst
        tasks = [asyncio.create_task(start(n)) for n in range(REQUESTS)]
        await asyncio.sleep(0.1)
        gate.set()
        answers = await asyncio.gather(*tasks)
        user.http = http

    assert Counter(a.status_code for a in answers) == {202: BALANCE, 402: REQUESTS - BALANCE}, [
        (a.status_code, a.text[:200]) for a in answers if a.status_code not in (202, 402)
    ]
    for refused in (a for a in answers if a.status_code == 402):
        assert refused.json()["error"]["code"] == "insufficient_tokens"
    started = [a.json()["id"] for a in answers if a.status_code == 202]
    assert len(set(started)) == BALANCE

    uid = uuid.UUID(user.id)
    async with db.connection() as conn:
        entries = await ledger.entries_for_user(conn, uid, limit=1000)
        assert await ledger.balance(conn, uid) == 0
    charges = [e for e in entries if e.kind == "charge"]
    assert len(charges) == BALANCE
    assert {str(e.generation_id) for e in charges} == set(started)
    assert await user.balance() == 0

    outcomes = await finished(db, started, timeout=600)
    assert set(outcomes.values()) <= {"completed", "failed"}, outcomes
    async with db.connection() as conn:
        assert await ledger.check_invariant(conn) == []
    await assert_ledger_consistent(db, [user])  # each failed one refunded once
