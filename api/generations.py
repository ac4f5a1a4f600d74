"""Starting a generation: validate, store the photo, charge one token together with the
generation row, then start the workflow. Every failure before the workflow owns the
generation leaves nothing behind: no token spent, no photo kept."""

from __future__ import annotations

import hashlib
import logging
import uuid
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, File, Form, Header, Request, UploadFile, status
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from temporalio.client import Client

from api import limits, text
from api.deps import (
    ConnDep,
    CurrentUser,
    CurrentUserAlone,
    PoolDep,
    SettingsDep,
    StorageDep,
    TemporalDep,
)
from api.errors import (
    IdempotencyKeyReused,
    Invalid,
    NotFound,
    PaymentRequired,
    Unavailable,
    documented,
)
from api.schemas import GenerationCreated, GenerationPublic
from api.uploads import read_photo
from billing import ledger
from infra.database import records
from infra.settings import Settings
from infra.storage import keys
from workflows import lifecycle

router = APIRouter(prefix="/v1/generations", tags=["generations"])
log = logging.getLogger("bitbuddies.api")
Conn = AsyncConnection[dict[str, Any]]
MAX_IDEMPOTENCY_KEY = 255


def _created(settings: Settings, generation: records.Generation) -> GenerationCreated:
    # Built from the configured public URL, never from the request's Host header.
    base = settings.public_url.rstrip("/")
    return GenerationCreated(
        id=generation.id,
        status=generation.status,
        events_url=f"{base}/v1/generations/{generation.id}/events",
    )


async def _request_digest(prompt: str, photo: UploadFile) -> bytes:
    """What was asked for, in 32 bytes: the prompt and the photo's exact bytes."""
    digest = hashlib.sha256(prompt.encode())
    digest.update(b"\0")
    while chunk := await photo.read(1024 * 1024):
        digest.update(chunk)
    await photo.seek(0)
    return digest.digest()


def _same_request(found: records.Generation, digest: bytes) -> None:
    if found.request_digest is not None and found.request_digest != digest:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was already used with a different photo or prompt; "
            "send a new key for a new request."
        )


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=GenerationCreated,
    responses=documented(
        401,
        402,
        413,
        415,
        422,
        429,
        503,
        s413="Photo larger than the limit",
        s415="Not a JPEG, PNG or WebP image",
        s422="Invalid prompt or key, unreadable photo, or an Idempotency-Key reused with a"
        " different request",
        s503="The generation could not be started; nothing was charged",
    ),
)
async def create_generation(
    request: Request,
    user: CurrentUserAlone,
    pool: PoolDep,
    settings: SettingsDep,
    storage: StorageDep,
    temporal: TemporalDep,
    photo: Annotated[UploadFile, File(description="JPEG, PNG or WebP, up to 20 MB")],
    prompt: Annotated[str, Form(description="What your BitBuddy should be like")],
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> GenerationCreated:
    # No connection is held while the photo is read and decoded: only short checkouts.
    try:
        prompt = text.clean_prompt(prompt, max_chars=settings.max_prompt_chars)
    except text.TextRefused as err:
        raise Invalid(str(err)) from err
    if idempotency_key is not None and not (
        0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY and idempotency_key.isprintable()
    ):
        raise Invalid("Idempotency-Key must be 1 to 255 printable characters.")

    digest = await _request_digest(prompt, photo)
    if idempotency_key:
        async with pool.connection() as conn:
            found = await records.generation_by_key(conn, user.id, idempotency_key)
        if found:
            _same_request(found, digest)
            return await _repeat(pool, temporal, settings, found)
    # Counted only now: a retry of a request already accepted is not a new start.
    await limits.start_allowed(request, str(user.id))

    checked = await read_photo(
        photo, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_photo_pixels
    )
    async with pool.connection() as conn:
        if await ledger.balance(conn, user.id) < 1:
            raise PaymentRequired("You have no tokens left.")

    generation_id = uuid.uuid4()
    photo_key = keys.input_photo(generation_id, checked.extension)
    await storage.write_bytes(photo_key, checked.data, content_type=checked.content_type)
    try:
        async with pool.connection() as conn, conn.transaction():
            created = await records.insert_generation(
                conn,
                generation_id=generation_id,
                user_id=user.id,
                prompt=prompt,
                photo_key=photo_key,
                idempotency_key=idempotency_key,
                request_digest=digest,
            )
            if created:
                await ledger.charge(
                    conn,
                    user.id,
                    idempotency_key=ledger.charge_key(generation_id),
                    generation_id=generation_id,
                )
    except ledger.InsufficientTokens as err:
        await storage.delete(photo_key)
        raise PaymentRequired("You have no tokens left.") from err
    except BaseException:
        await storage.delete(photo_key)
        raise
    if not created:  # a concurrent request with the same key won the race
        await storage.delete(photo_key)
        assert idempotency_key is not None
        async with pool.connection() as conn:
            found = await records.generation_by_key(conn, user.id, idempotency_key)
        assert found is not None
        _same_request(found, digest)
        return await _repeat(pool, temporal, settings, found)

    async with pool.connection() as conn:
        generation = await records.generation(conn, generation_id)
        assert generation is not None
        await _start(conn, temporal, settings, generation)
    log.info("generation started", extra={"generation_id": generation_id, "user_id": user.id})
    return _created(settings, generation)


async def _start(
    conn: Conn, temporal: Client, settings: Settings, generation: records.Generation
) -> None:
    try:
        await lifecycle.start_or_refund(conn, temporal, settings, generation)
    except lifecycle.StartFailed as err:
        raise Unavailable(
            "We couldn't start your BitBuddy right now. Your token has been refunded; try again."
        ) from err


async def _repeat(
    pool: AsyncConnectionPool[Any],
    temporal: Client,
    settings: Settings,
    generation: records.Generation,
) -> GenerationCreated:
    """A retried request: same generation, no new charge. If the first attempt died
    between charging and starting, start now."""
    if generation.status == "queued":
        async with pool.connection() as conn:
            await _start(conn, temporal, settings, generation)
    return _created(settings, generation)


async def owned_generation(conn: Conn, generation_id: UUID, user_id: UUID) -> records.Generation:
    """The caller's generation, or 404 (another user's looks exactly like a missing one)."""
    generation = await records.generation(conn, generation_id)
    if generation is None or generation.user_id != user_id:
        raise NotFound("No such generation.")
    return generation


@router.get(
    "/{generation_id}",
    response_model=GenerationPublic,
    responses=documented(401, 404, 422),
)
async def get_generation(generation_id: UUID, user: CurrentUser, conn: ConnDep) -> GenerationPublic:
    generation = await owned_generation(conn, generation_id, user.id)
    return GenerationPublic(
        id=generation.id,
        status=generation.status,
        step=generation.step,
        error=generation.error,
        character_id=generation.character_id,
    )
