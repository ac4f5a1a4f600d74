"""Every SQL query about accounts, generations and characters (the ledger's live in
``billing/ledger.py``, the progress log's in ``infra/progress.py``). Functions take a
connection so callers own the transaction."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal
from uuid import UUID

from psycopg import AsyncConnection

from workflows.contract import TERMINAL_STATUSES, Status

Conn = AsyncConnection[dict[str, Any]]


@dataclass(frozen=True)
class User:
    id: UUID
    email: str
    password_hash: str


@dataclass(frozen=True)
class Generation:
    id: UUID
    user_id: UUID
    idempotency_key: str | None
    prompt: str
    photo_key: str
    status: Status
    step: str | None
    error: str | None
    error_code: str | None
    character_id: UUID | None
    created_at: datetime
    updated_at: datetime
    request_digest: bytes | None = None


@dataclass(frozen=True)
class Character:
    id: UUID
    user_id: UUID
    generation_id: UUID
    prompt: str
    webm_key: str
    webp_key: str
    png_key: str
    width: int
    height: int
    created_at: datetime
    # its public share page: the slug, once made; shared_at while sharing is on
    share_slug: str | None = None
    shared_at: datetime | None = None

    @property
    def shared(self) -> bool:
        return self.shared_at is not None


# --- accounts ---------------------------------------------------------------------


async def insert_user(conn: Conn, user_id: UUID, email: str, password_hash: str) -> bool:
    """False when the email is taken (case-insensitively)."""
    cur = await conn.execute(
        "INSERT INTO users (id, email, password_hash) VALUES (%s, %s, %s)"
        " ON CONFLICT DO NOTHING RETURNING id",
        (user_id, email, password_hash),
    )
    return await cur.fetchone() is not None


async def user_by_email(conn: Conn, email: str) -> User | None:
    cur = await conn.execute(
        "SELECT id, email, password_hash FROM users WHERE lower(email) = lower(%s)", (email,)
    )
    row = await cur.fetchone()
    return User(**row) if row else None


async def user_by_id(conn: Conn, user_id: UUID) -> User | None:
    cur = await conn.execute("SELECT id, email, password_hash FROM users WHERE id = %s", (user_id,))
    row = await cur.fetchone()
    return User(**row) if row else None


async def update_password_hash(conn: Conn, user_id: UUID, password_hash: str) -> None:
    await conn.execute(
        "UPDATE users SET password_hash = %s WHERE id = %s", (password_hash, user_id)
    )


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def insert_bearer_token(
    conn: Conn,
    token: str,
    user_id: UUID,
    ttl: timedelta,
    *,
    name: str | None = None,
    device: bool = False,
) -> DeviceToken:
    cur = await conn.execute(
        "INSERT INTO bearer_tokens (token_hash, user_id, expires_at, name, device)"
        " VALUES (%s, %s, now() + %s, %s, %s) RETURNING id, name, created_at, expires_at",
        (token_digest(token), user_id, ttl, name, device),
    )
    row = await cur.fetchone()
    assert row is not None
    return DeviceToken(**row)


@dataclass(frozen=True)
class Bearer:
    user: User
    device: bool  # a device token: no power over tokens, the password or the account


@dataclass(frozen=True)
class DeviceToken:
    id: UUID
    name: str | None
    created_at: datetime
    expires_at: datetime


async def bearer(conn: Conn, token: str) -> Bearer | None:
    cur = await conn.execute(
        "SELECT u.id, u.email, u.password_hash, t.device"
        " FROM bearer_tokens t JOIN users u ON u.id = t.user_id"
        " WHERE t.token_hash = %s AND t.expires_at > now()",
        (token_digest(token),),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    device = bool(row.pop("device"))
    return Bearer(user=User(**row), device=device)


async def device_tokens(conn: Conn, user_id: UUID) -> list[DeviceToken]:
    cur = await conn.execute(
        "SELECT id, name, created_at, expires_at FROM bearer_tokens"
        " WHERE user_id = %s AND device AND expires_at > now() ORDER BY created_at, id",
        (user_id,),
    )
    return [DeviceToken(**row) for row in await cur.fetchall()]


async def revoke_device_token(conn: Conn, user_id: UUID, token_id: UUID) -> bool:
    cur = await conn.execute(
        "DELETE FROM bearer_tokens WHERE id = %s AND user_id = %s AND device",
        (token_id, user_id),
    )
    return cur.rowcount > 0


async def end_bearer_token(conn: Conn, token: str) -> None:
    """Log out a bearer token: it is gone, whatever kind it is."""
    await conn.execute("DELETE FROM bearer_tokens WHERE token_hash = %s", (token_digest(token),))


async def end_bearer_tokens(conn: Conn, user_id: UUID, *, keep: str | None = None) -> int:
    """End every bearer token of the user but ``keep``; how many ended."""
    cur = await conn.execute(
        "DELETE FROM bearer_tokens WHERE user_id = %s AND token_hash IS DISTINCT FROM %s",
        (user_id, token_digest(keep) if keep else None),
    )
    return cur.rowcount


# --- browser sessions ---------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    user: User
    csrf_token: str


async def insert_session(
    conn: Conn, session_id: str, user_id: UUID, csrf_token: str, ttl: timedelta
) -> None:
    await conn.execute(
        "INSERT INTO sessions (id_hash, user_id, csrf_token, expires_at)"
        " VALUES (%s, %s, %s, now() + %s)",
        (token_digest(session_id), user_id, csrf_token, ttl),
    )


async def session(conn: Conn, session_id: str) -> Session | None:
    cur = await conn.execute(
        "SELECT u.id, u.email, u.password_hash, s.csrf_token"
        " FROM sessions s JOIN users u ON u.id = s.user_id"
        " WHERE s.id_hash = %s AND s.expires_at > now()",
        (token_digest(session_id),),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    csrf_token = row.pop("csrf_token")
    return Session(user=User(**row), csrf_token=csrf_token)


async def end_session(conn: Conn, session_id: str) -> None:
    await conn.execute("DELETE FROM sessions WHERE id_hash = %s", (token_digest(session_id),))


async def end_sessions(conn: Conn, user_id: UUID, *, keep: str | None = None) -> int:
    """End every browser session of the user but ``keep``; how many ended."""
    cur = await conn.execute(
        "DELETE FROM sessions WHERE user_id = %s AND id_hash IS DISTINCT FROM %s",
        (user_id, token_digest(keep) if keep else None),
    )
    return cur.rowcount


# --- email links: verification and password reset ----------------------------------

EmailPurpose = Literal["verify_email", "reset_password"]


async def email_verified(conn: Conn, user_id: UUID) -> bool:
    cur = await conn.execute(
        "SELECT email_verified_at IS NOT NULL AS verified FROM users WHERE id = %s", (user_id,)
    )
    row = await cur.fetchone()
    return bool(row and row["verified"])


async def mark_email_verified(conn: Conn, user_id: UUID) -> bool:
    """True when this call verified it (False: already verified, or no such user)."""
    cur = await conn.execute(
        "UPDATE users SET email_verified_at = now()"
        " WHERE id = %s AND email_verified_at IS NULL RETURNING id",
        (user_id,),
    )
    return await cur.fetchone() is not None


async def insert_email_token(
    conn: Conn, token: str, user_id: UUID, purpose: EmailPurpose, ttl: timedelta
) -> None:
    await conn.execute(
        "INSERT INTO email_tokens (token_hash, user_id, purpose, expires_at)"
        " VALUES (%s, %s, %s, now() + %s)",
        (token_digest(token), user_id, purpose, ttl),
    )


async def email_token_user(conn: Conn, token: str, purpose: EmailPurpose) -> User | None:
    """The user a live (unexpired, unused) link's token belongs to."""
    cur = await conn.execute(
        "SELECT u.id, u.email, u.password_hash FROM email_tokens t JOIN users u ON u.id = t.user_id"
        " WHERE t.token_hash = %s AND t.purpose = %s AND t.expires_at > now()",
        (token_digest(token), purpose),
    )
    row = await cur.fetchone()
    return User(**row) if row else None


async def use_email_token(conn: Conn, token: str, purpose: EmailPurpose) -> UUID | None:
    """Use a live link's token: it, and every other of its purpose for the same user, is
    deleted. The user's id, or None when it was unknown, expired or used already (a
    concurrent use gets None: the row is gone once the first one commits)."""
    cur = await conn.execute(
        "DELETE FROM email_tokens WHERE token_hash = %s AND purpose = %s AND expires_at > now()"
        " RETURNING user_id",
        (token_digest(token), purpose),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    user_id: UUID = row["user_id"]
    await conn.execute(
        "DELETE FROM email_tokens WHERE user_id = %s AND purpose = %s", (user_id, purpose)
    )
    return user_id


@dataclass(frozen=True)
class ExpiredCredentials:
    sessions: int
    bearer_tokens: int
    email_tokens: int
    pairing_codes: int

    @property
    def total(self) -> int:
        return self.sessions + self.bearer_tokens + self.email_tokens + self.pairing_codes


async def delete_expired_credentials(conn: Conn) -> ExpiredCredentials:
    """Delete every expired browser session, bearer token, email link token and pairing
    code."""
    counts = []
    for table in ("sessions", "bearer_tokens", "email_tokens", "pairing_codes"):
        cur = await conn.execute(f"DELETE FROM {table} WHERE expires_at <= now()")
        counts.append(cur.rowcount)
    return ExpiredCredentials(*counts)


# --- generations ------------------------------------------------------------------

_GEN = (
    "id, user_id, idempotency_key, prompt, photo_key, status, step, error, error_code,"
    " character_id, created_at, updated_at, request_digest"
)


async def insert_generation(
    conn: Conn,
    *,
    generation_id: UUID,
    user_id: UUID,
    prompt: str,
    photo_key: str,
    idempotency_key: str | None,
    request_digest: bytes | None = None,
) -> bool:
    """False when this user already has a generation under ``idempotency_key``."""
    cur = await conn.execute(
        "INSERT INTO generations"
        " (id, user_id, prompt, photo_key, idempotency_key, request_digest)"
        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING id",
        (generation_id, user_id, prompt, photo_key, idempotency_key, request_digest),
    )
    return await cur.fetchone() is not None


async def generation(conn: Conn, generation_id: UUID) -> Generation | None:
    cur = await conn.execute(f"SELECT {_GEN} FROM generations WHERE id = %s", (generation_id,))
    row = await cur.fetchone()
    return Generation(**row) if row else None


async def generation_by_key(conn: Conn, user_id: UUID, idempotency_key: str) -> Generation | None:
    cur = await conn.execute(
        f"SELECT {_GEN} FROM generations WHERE user_id = %s AND idempotency_key = %s",
        (user_id, idempotency_key),
    )
    row = await cur.fetchone()
    return Generation(**row) if row else None


async def set_generation_step(conn: Conn, generation_id: UUID, step: str) -> None:
    """Record the running step; never moves a finished generation back to running."""
    await conn.execute(
        "UPDATE generations SET status = 'running', step = %s, updated_at = now()"
        " WHERE id = %s AND status IN ('queued', 'running')",
        (step, generation_id),
    )


async def finish_generation(
    conn: Conn,
    generation_id: UUID,
    *,
    status: Status,
    step: str | None,
    error: str | None = None,
    error_code: str | None = None,
    character_id: UUID | None = None,
) -> Generation:
    """Move to a terminal status once; a repeat leaves the first outcome in place."""
    assert status in TERMINAL_STATUSES
    await conn.execute(
        "UPDATE generations SET status = %s, step = %s, error = %s, error_code = %s,"
        " character_id = %s, updated_at = now()"
        " WHERE id = %s AND status NOT IN ('completed', 'failed', 'cancelled')",
        (status, step, error, error_code, character_id, generation_id),
    )
    found = await generation(conn, generation_id)
    assert found is not None
    return found


async def generations_with_files_to_discard(
    conn: Conn, ended_before: timedelta, *, limit: int
) -> list[UUID]:
    """Ended generations (longest ended first) whose working files are still stored."""
    cur = await conn.execute(
        "SELECT id FROM generations"
        " WHERE files_discarded_at IS NULL AND status IN ('completed', 'failed', 'cancelled')"
        " AND updated_at < now() - %s ORDER BY updated_at LIMIT %s",
        (ended_before, limit),
    )
    return [row["id"] for row in await cur.fetchall()]


async def mark_files_discarded(conn: Conn, generation_id: UUID) -> None:
    await conn.execute(
        "UPDATE generations SET files_discarded_at = now() WHERE id = %s", (generation_id,)
    )


async def stale_open_generations(
    conn: Conn,
    older_than: timedelta,
    *,
    after: Generation | None = None,
    limit: int,
) -> list[Generation]:
    """Queued or running generations that have not moved for ``older_than``, stalest
    first; ``after`` (the last of the previous page) continues where that page ended."""
    since: tuple[datetime | str, UUID] = (
        (after.updated_at, after.id) if after else ("-infinity", UUID(int=0))
    )
    cur = await conn.execute(
        f"SELECT {_GEN} FROM generations WHERE status IN ('queued', 'running')"
        " AND updated_at < now() - %s AND (updated_at, id) > (%s::timestamptz, %s)"
        " ORDER BY updated_at, id LIMIT %s",
        (older_than, *since, limit),
    )
    return [Generation(**row) for row in await cur.fetchall()]


# --- characters -------------------------------------------------------------------

_CHAR = "id, user_id, generation_id, prompt, webm_key, webp_key, png_key, width, height, created_at"
_CHAR_READ = f"{_CHAR}, share_slug, shared_at"


async def insert_character(conn: Conn, character: Character) -> Character:
    """Idempotent by generation: a retry returns the character recorded first."""
    await conn.execute(
        f"INSERT INTO characters ({_CHAR}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (generation_id) DO NOTHING",
        (
            character.id,
            character.user_id,
            character.generation_id,
            character.prompt,
            character.webm_key,
            character.webp_key,
            character.png_key,
            character.width,
            character.height,
            character.created_at,
        ),
    )
    cur = await conn.execute(
        f"SELECT {_CHAR_READ} FROM characters WHERE generation_id = %s", (character.generation_id,)
    )
    row = await cur.fetchone()
    assert row is not None
    return Character(**row)


async def character_for_user(conn: Conn, character_id: UUID, user_id: UUID) -> Character | None:
    cur = await conn.execute(
        f"SELECT {_CHAR_READ} FROM characters WHERE id = %s AND user_id = %s",
        (character_id, user_id),
    )
    row = await cur.fetchone()
    return Character(**row) if row else None


async def characters_for_user(conn: Conn, user_id: UUID, *, limit: int = 100) -> list[Character]:
    cur = await conn.execute(
        f"SELECT {_CHAR_READ} FROM characters WHERE user_id = %s ORDER BY created_at DESC LIMIT %s",
        (user_id, limit),
    )
    return [Character(**row) for row in await cur.fetchall()]


async def set_character_shared(
    conn: Conn, character_id: UUID, user_id: UUID, *, shared: bool, new_slug: str
) -> Character | None:
    """Switch a character's share page on or off, for its owner only (None otherwise).
    The slug is made once (``new_slug``, used only if it has none) and kept."""
    cur = await conn.execute(
        "UPDATE characters SET share_slug = COALESCE(share_slug, %s),"
        " shared_at = CASE WHEN %s THEN COALESCE(shared_at, now()) END"
        f" WHERE id = %s AND user_id = %s RETURNING {_CHAR_READ}",
        (new_slug, shared, character_id, user_id),
    )
    row = await cur.fetchone()
    return Character(**row) if row else None


async def shared_character(conn: Conn, slug: str) -> Character | None:
    """The character whose share page this is, only while sharing is on."""
    cur = await conn.execute(
        f"SELECT {_CHAR_READ} FROM characters WHERE share_slug = %s AND shared_at IS NOT NULL",
        (slug,),
    )
    row = await cur.fetchone()
    return Character(**row) if row else None


# --- account deletion ---------------------------------------------------------------


@dataclass(frozen=True)
class ErasedGeneration:
    generation_id: UUID
    character_id: UUID | None


async def open_generations(conn: Conn, user_id: UUID) -> list[Generation]:
    """The user's queued or running generations."""
    cur = await conn.execute(
        f"SELECT {_GEN} FROM generations WHERE user_id = %s AND status IN ('queued', 'running')"
        " ORDER BY created_at, id",
        (user_id,),
    )
    return [Generation(**row) for row in await cur.fetchall()]


async def lock_user_generations(conn: Conn, user_id: UUID) -> list[Generation]:
    """Every generation of the user, locked until the transaction ends: a settle or a
    delivery that runs meanwhile (``lock_generation``) waits, then finds them gone."""
    cur = await conn.execute(
        f"SELECT {_GEN} FROM generations WHERE user_id = %s ORDER BY id FOR UPDATE", (user_id,)
    )
    return [Generation(**row) for row in await cur.fetchall()]


async def lock_generation(conn: Conn, generation_id: UUID) -> str | None:
    """Lock the generation's row until the transaction ends, and return its status as
    locked; None when it no longer exists (its account was deleted)."""
    cur = await conn.execute(
        "SELECT status FROM generations WHERE id = %s FOR UPDATE", (generation_id,)
    )
    row = await cur.fetchone()
    return str(row["status"]) if row else None


async def erase_account(conn: Conn, user_id: UUID) -> list[ErasedGeneration]:
    """Delete the user and everything that is theirs: characters, generations (their
    event logs with them), and by cascade their balance, browser sessions, bearer tokens
    and email link tokens. Each generation is remembered in ``erased_generations`` (ids
    only) for the housekeeping sweep. The ledger's entries must be erased first
    (``billing.ledger.erase_account``): they still name the generations."""
    cur = await conn.execute(
        "SELECT g.id AS generation_id, c.id AS character_id FROM generations g"
        " LEFT JOIN characters c ON c.generation_id = g.id WHERE g.user_id = %s"
        " UNION SELECT c.generation_id, c.id FROM characters c WHERE c.user_id = %s",
        (user_id, user_id),
    )
    erased = [ErasedGeneration(**row) for row in await cur.fetchall()]
    if erased:
        await conn.execute(
            "INSERT INTO erased_generations (generation_id, character_id)"
            " SELECT * FROM unnest(%s::uuid[], %s::uuid[]) ON CONFLICT DO NOTHING",
            ([e.generation_id for e in erased], [e.character_id for e in erased]),
        )
    await conn.execute("DELETE FROM characters WHERE user_id = %s", (user_id,))
    await conn.execute("DELETE FROM generations WHERE user_id = %s", (user_id,))
    await conn.execute("DELETE FROM users WHERE id = %s", (user_id,))
    return erased


async def erased_generations(
    conn: Conn, *, after: UUID | None = None, limit: int
) -> list[ErasedGeneration]:
    """A page of the erased generations still watched, by id; ``after`` is the last id of
    the previous page."""
    cur = await conn.execute(
        "SELECT generation_id, character_id FROM erased_generations"
        " WHERE generation_id > %s ORDER BY generation_id LIMIT %s",
        (after or UUID(int=0), limit),
    )
    return [ErasedGeneration(**row) for row in await cur.fetchall()]


async def forget_erased_generations(conn: Conn, older_than: timedelta) -> int:
    cur = await conn.execute(
        "DELETE FROM erased_generations WHERE erased_at < now() - %s", (older_than,)
    )
    return cur.rowcount
