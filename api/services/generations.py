"""Starting a generation: validate, store the photo, charge one token together with the
generation row, then start its workflow (or, if Temporal refuses, settle it: refunded).
Every failure before the workflow owns the generation leaves nothing behind: no token
spent, no photo kept.

A request may carry an idempotency key: repeating it (after a timeout, a crash, a double
click) returns the generation the first one made, charges nothing, and starts the
workflow if the first attempt died between charging and starting.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg_pool import AsyncConnectionPool
from temporalio.client import Client

from api.services import text
from api.services.errors import (
    AlreadyEnded,
    Busy,
    CouldNotStart,
    InvalidInput,
    KeyReused,
    NotFound,
    NoTokens,
    TokensOwed,
)
from api.services.photos import Upload, read_photo
from billing import ledger
from infra import metrics
from infra.database import records
from infra.database.records import Conn
from infra.settings import Settings
from infra.storage import Storage, keys
from workflows import contract, lifecycle

log = logging.getLogger("bitbuddies.generations")
MAX_IDEMPOTENCY_KEY = 255
READ_CHUNK = 1024 * 1024
_NO_TOKENS = "You have no tokens left."


def _no_tokens(owed: int) -> NoTokens:
    """Why the balance cannot pay: none left, or a debt (a payment taken back after its
    tokens were spent) that a purchase settles first."""
    if owed > 0:
        return TokensOwed(
            f"A payment of yours was refunded or disputed after its tokens were spent, so"
            f" you owe {owed} token{'s' if owed != 1 else ''}. Buy tokens to settle it and"
            " make BitBuddies again.",
            owed=owed,
        )
    return NoTokens(_NO_TOKENS)


@dataclass(frozen=True)
class StartRequest:
    user_id: UUID
    prompt: str
    photo: Upload
    idempotency_key: str | None = None


class GenerationService:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        storage: Storage,
        temporal: Client,
        settings: Settings,
    ) -> None:
        self.pool = pool
        self.storage = storage
        self.temporal = temporal
        self.settings = settings

    async def start(
        self,
        request: StartRequest,
        *,
        admit: Callable[[], Awaitable[None]] | None = None,
    ) -> records.Generation:
        """The generation this request made (or made before, under its key). ``admit``
        is asked only before a new generation (a repeat is not a new start): the place
        for a rate limit, which refuses by raising."""
        settings = self.settings
        # No connection is held while the photo is read and decoded: only short checkouts.
        try:
            prompt = text.clean_prompt(request.prompt, max_chars=settings.max_prompt_chars)
        except text.TextRefused as err:
            raise InvalidInput(str(err)) from err
        key = request.idempotency_key
        if key is not None and not (0 < len(key) <= MAX_IDEMPOTENCY_KEY and key.isprintable()):
            raise InvalidInput("Idempotency-Key must be 1 to 255 printable characters.")

        digest = await _request_digest(prompt, request.photo)
        if key:
            async with self.pool.connection() as conn:
                found = await records.generation_by_key(conn, request.user_id, key)
            if found:
                return await self._repeat(found, digest)
        if admit is not None:
            await admit()

        checked = await read_photo(
            request.photo,
            max_bytes=settings.max_upload_bytes,
            max_pixels=settings.max_photo_pixels,
        )
        async with self.pool.connection() as conn:
            if await ledger.balance(conn, request.user_id) < 1:
                raise _no_tokens(await ledger.owed(conn, request.user_id))

        generation_id = uuid.uuid4()
        photo_key = keys.input_photo(generation_id, checked.extension)
        await self.storage.write_bytes(photo_key, checked.data, content_type=checked.content_type)
        try:
            async with self.pool.connection() as conn, conn.transaction():
                created = await records.insert_generation(
                    conn,
                    generation_id=generation_id,
                    user_id=request.user_id,
                    prompt=prompt,
                    photo_key=photo_key,
                    idempotency_key=key,
                    request_digest=digest,
                )
                if created:
                    await ledger.charge(
                        conn,
                        request.user_id,
                        idempotency_key=ledger.charge_key(generation_id),
                        generation_id=generation_id,
                    )
        except ledger.InsufficientTokens as err:
            await self.storage.delete(photo_key)
            raise _no_tokens(err.owed if isinstance(err, ledger.TokensOwed) else 0) from err
        except BaseException:
            await self.storage.delete(photo_key)
            raise
        if not created:  # a concurrent request with the same key won the race
            await self.storage.delete(photo_key)
            assert key is not None
            async with self.pool.connection() as conn:
                found = await records.generation_by_key(conn, request.user_id, key)
            assert found is not None
            return await self._repeat(found, digest)

        async with self.pool.connection() as conn:
            generation = await records.generation(conn, generation_id)
            assert generation is not None
            await self._start(conn, generation)
        metrics.generation_started()
        log.info(
            "generation started",
            extra={"generation_id": generation_id, "user_id": request.user_id},
        )
        return generation

    async def _repeat(self, found: records.Generation, digest: bytes) -> records.Generation:
        """A retried request: same generation, no new charge. If the first attempt died
        between charging and starting, start now."""
        if found.request_digest is not None and found.request_digest != digest:
            raise KeyReused(
                "This Idempotency-Key was already used with a different photo or prompt; "
                "send a new key for a new request."
            )
        if found.status == "queued":
            async with self.pool.connection() as conn:
                await self._start(conn, found)
        return found

    async def _start(self, conn: Conn, generation: records.Generation) -> None:
        try:
            await lifecycle.start_or_refund(conn, self.temporal, self.settings, generation)
        except lifecycle.StartFailed as err:
            raise CouldNotStart(
                contract.settled_message(contract.START_FAILED, refunded=True)
            ) from err

    async def cancel(self, user_id: UUID, generation_id: UUID) -> records.Generation:
        """Stop the caller's generation (workflows/lifecycle.py ``cancel``): it ends as
        cancelled, its token refunded. AlreadyEnded when it has ended."""
        async with self.pool.connection() as conn:
            generation = await owned_generation(conn, generation_id, user_id)
            if generation.status in contract.TERMINAL_STATUSES:
                raise AlreadyEnded(f"This BitBuddy has already ended ({generation.status}).")
            try:
                asked = await lifecycle.cancel(conn, self.temporal, generation)
            except lifecycle.CancelUnavailable as err:
                raise Busy("We could not stop it just now; try again.", retry_after=5) from err
            log.info(
                "generation cancelled by its owner%s",
                "" if asked else " (no workflow was running: settled here)",
                extra={"generation_id": generation_id, "user_id": user_id},
            )
            found = await records.generation(conn, generation_id)
        if found is None:  # its account was deleted meanwhile
            raise NotFound("No such generation.")
        return found


async def owned_generation(conn: Conn, generation_id: UUID, user_id: UUID) -> records.Generation:
    """The caller's generation; NotFound for another user's, exactly as for a missing one."""
    generation = await records.generation(conn, generation_id)
    if generation is None or generation.user_id != user_id:
        raise NotFound("No such generation.")
    return generation


async def _request_digest(prompt: str, photo: Upload) -> bytes:
    """What was asked for, in 32 bytes: the prompt and the photo's exact bytes."""
    digest = hashlib.sha256(prompt.encode())
    digest.update(b"\0")
    while chunk := await photo.read(READ_CHUNK):
        digest.update(chunk)
    await photo.seek(0)
    return digest.digest()
