"""Starting a generation: validate, store the photo, charge one token together with the
generation row, then start the workflow. Every failure before the workflow owns the
generation leaves nothing behind: no token spent, no photo kept."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import uuid
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, File, Form, Header, Request, UploadFile, status
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

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
from infra import progress
from infra.database import records
from infra.settings import Settings
from infra.storage import keys
from workflows import contract
from workflows.contract import BitBuddyInput, RenderSpec, RetrySpec

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


def workflow_input(settings: Settings, generation: records.Generation) -> BitBuddyInput:
    return BitBuddyInput(
        generation_id=str(generation.id),
        user_id=str(generation.user_id),
        prompt=generation.prompt,
        photo_key=generation.photo_key,
        render=RenderSpec(
            size=settings.render_size,
            fps=settings.animation_fps,
            seconds=settings.animation_seconds,
            nsfw_threshold=settings.nsfw_threshold,
        ),
        media_task_queue=settings.media_task_queue,
        retry=RetrySpec(
            resubmits=settings.model_resubmits,
            backoff_seconds=settings.model_resubmit_backoff_seconds,
        ),
    )


async def start_workflow(
    client: Client, settings: Settings, generation: records.Generation
) -> None:
    """Start (or find already started) the generation's workflow. Safe to repeat: the
    workflow id is the generation id, and a finished run is never started again."""
    with contextlib.suppress(WorkflowAlreadyStartedError):
        await client.start_workflow(
            contract.WORKFLOW_NAME,
            workflow_input(settings, generation),
            id=str(generation.id),
            task_queue=settings.task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )


async def _workflow_exists(client: Client, generation_id: UUID) -> bool | None:
    """True/False, or None when Temporal can't say."""
    try:
        description = await client.get_workflow_handle(str(generation_id)).describe()
    except RPCError as err:
        return False if err.status == RPCStatusCode.NOT_FOUND else None
    return description is not None


async def _undo_charge(conn: Conn, generation: records.Generation, why: str) -> None:
    """Refund, record the failure and its terminal event in one transaction. Nobody is
    told through Redis: the caller answers 503, and any stream of it reads the log."""
    async with conn.transaction():
        await ledger.refund(
            conn,
            charge_key=ledger.charge_key(generation.id),
            idempotency_key=f"generation:{generation.id}:start-failed",
            reason=why,
        )
        await records.finish_generation(
            conn,
            generation.id,
            status="failed",
            step="queued",
            error_code="unavailable",
            error=contract.START_FAILED,
        )
        await progress.append(
            conn,
            str(generation.id),
            event="failed",
            dedupe="terminal",
            step="queued",
            message=contract.START_FAILED,
            percent=0,
            error_code="unavailable",
            status="failed",
            refunded=True,
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
        await start_or_refund(conn, temporal, settings, generation)
    log.info("generation started", extra={"generation_id": generation_id, "user_id": user.id})
    return _created(settings, generation)


async def start_or_refund(
    conn: Conn, temporal: Client, settings: Settings, generation: records.Generation
) -> None:
    """Start the generation's workflow; if Temporal refuses, refund and raise Unavailable."""
    try:
        await start_workflow(temporal, settings, generation)
    except RPCError as err:
        # The start may have reached Temporal even though we saw an error.
        if await _workflow_exists(temporal, generation.id):
            return
        await _undo_charge(conn, generation, f"workflow start failed: {err.status.name}")
        log.error(
            "could not start workflow; token refunded",
            extra={"generation_id": generation.id, "user_id": generation.user_id},
        )
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
            await start_or_refund(conn, temporal, settings, generation)
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
