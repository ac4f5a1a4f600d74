"""What the housekeeping sweep does for accounts: expired sessions, bearer tokens, email
link tokens and pairing codes are deleted; and for a day after an account's deletion, whatever a
workflow still running then writes to its generations' storage is deleted again."""

from __future__ import annotations

import secrets
import uuid
from datetime import timedelta

import httpx
from psycopg_pool import AsyncConnectionPool

from infra.database import pairing, records
from infra.settings import Settings
from infra.storage import keys, storage_from_settings
from tests.conftest import Stack, insert_generation
from tests.support.client import signup
from tests.support.faults import wait_until

Pool = AsyncConnectionPool  # type: ignore[type-arg]
EXPIRED = timedelta(seconds=-1)
LIVE = timedelta(hours=1)


async def _count(db: Pool, table: str, user_id: uuid.UUID) -> int:
    async with db.connection() as conn:
        cur = await conn.execute(
            f"SELECT count(*) AS n FROM {table} WHERE user_id = %s", (user_id,)
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row["n"])


async def test_the_sweep_deletes_expired_sessions_tokens_and_email_links(
    stack: Stack, http: httpx.AsyncClient, db: Pool
) -> None:
    user = await signup(http)  # one live bearer token, one live verification link
    user_id = uuid.UUID(user.id)
    async with db.connection() as conn:
        for ttl in (EXPIRED, LIVE):
            await records.insert_bearer_token(conn, secrets.token_urlsafe(), user_id, ttl)
            await records.insert_session(conn, secrets.token_urlsafe(), user_id, "csrf", ttl)
            for purpose in ("verify_email", "reset_password"):
                await records.insert_email_token(
                    conn,
                    secrets.token_urlsafe(),
                    user_id,
                    purpose,  # type: ignore[arg-type]
                    ttl,
                )
            await pairing.insert_code(conn, secrets.token_urlsafe(), user_id, ttl)

    async def only_live_ones_left() -> bool:
        return (
            await _count(db, "bearer_tokens", user_id),
            await _count(db, "sessions", user_id),
            await _count(db, "email_tokens", user_id),
            await _count(db, "pairing_codes", user_id),
        ) == (2, 1, 3, 1)

    await wait_until(only_live_ones_left, timeout=30)
    assert (await http.get("/v1/me", headers=user.headers)).status_code == 200


async def test_files_written_for_a_deleted_accounts_generation_are_deleted_again(
    stack: Stack, http: httpx.AsyncClient, db: Pool
) -> None:
    user = await signup(http)
    generation_id = await insert_generation(db, uuid.UUID(user.id), charged=True)
    deleted = await http.request(
        "DELETE", "/v1/me", json={"password": "correct horse"}, headers=user.headers
    )
    assert deleted.status_code == 204, deleted.text
    # As a workflow still running at the deletion would: a step's output, written after.
    late = keys.step_output(generation_id, "animate", "video.mp4")
    await storage_from_settings(Settings()).write_bytes(late, b"late", content_type="video/mp4")
    path = stack.cfg.data_dir / "storage" / late
    assert path.exists()

    async def gone() -> bool:
        return not path.exists()

    await wait_until(gone, timeout=30)
