"""Starting a generation: validate, store the photo, charge one token together with the
generation row, then start the workflow. Every failure before the workflow owns the
generation leaves nothing behind: no token spent, no photo kept."""

from __future__ import annotations

import contextlib
import logging
import uuid
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, File, Form, Header, Request, UploadFile, status
from psycopg import AsyncConnection
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from api.deps import ConnDep, CurrentUser, SettingsDep, StorageDep, TemporalDep
from api.errors import Invalid, NotFound, PaymentRequired, Unavailable
from api.schemas import GenerationCreated, GenerationPublic
from api.uploads import read_photo
from billing import ledger
from infra.database import records
from infra.settings import Settings
from workflows.bitbuddy import BitBuddyInput, BitBuddyWorkflow, RenderSpec

router = APIRouter(prefix="/v1/generations", tags=["generations"])
log = logging.getLogger("bitbuddies.api")
Conn = AsyncConnection[dict[str, Any]]
MAX_IDEMPOTENCY_KEY = 255


def _created(request: Request, generation: records.Generation) -> GenerationCreated:
    return GenerationCreated(
        id=generation.id,
        status=generation.status,  # type: ignore[arg-type]
        events_url=str(request.url_for("generation_events", generation_id=generation.id)),
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
    )


async def start_workflow(
    client: Client, settings: Settings, generation: records.Generation
) -> None:
    """Start (or find already started) the generation's workflow. Safe to repeat: the
    workflow id is the generation id, and a finished run is never started again."""
    with contextlib.suppress(WorkflowAlreadyStartedError):
        await client.start_workflow(
            BitBuddyWorkflow.run,
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
            error="We couldn't start your BitBuddy. Your token has been refunded; try again.",
        )


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=GenerationCreated,
    responses={
        402: {"description": "No tokens left"},
        413: {"description": "Photo larger than the limit"},
        415: {"description": "Not a JPEG, PNG or WebP image"},
        422: {"description": "Invalid prompt, key or unreadable photo"},
    },
)
async def create_generation(
    request: Request,
    user: CurrentUser,
    conn: ConnDep,
    settings: SettingsDep,
    storage: StorageDep,
    temporal: TemporalDep,
    photo: Annotated[UploadFile, File(description="JPEG, PNG or WebP, up to 20 MB")],
    prompt: Annotated[str, Form(description="What your BitBuddy should be like")],
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> GenerationCreated:
    prompt = prompt.strip()
    if not prompt:
        raise Invalid("The prompt is empty.")
    if len(prompt) > settings.max_prompt_chars:
        raise Invalid(f"The prompt is longer than {settings.max_prompt_chars} characters.")
    if idempotency_key is not None and not (
        0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY and idempotency_key.isprintable()
    ):
        raise Invalid("Idempotency-Key must be 1 to 255 printable characters.")

    if idempotency_key and (
        found := await records.generation_by_key(conn, user.id, idempotency_key)
    ):
        return await _repeat(request, temporal, settings, found)

    checked = await read_photo(photo, max_bytes=settings.max_upload_bytes)
    if await ledger.balance(conn, user.id) < 1:
        raise PaymentRequired("You have no tokens left.")

    generation_id = uuid.uuid4()
    photo_key = f"generations/{generation_id}/input/photo.{checked.extension}"
    await storage.write_bytes(photo_key, checked.data, content_type=checked.content_type)
    try:
        async with conn.transaction():
            created = await records.insert_generation(
                conn,
                generation_id=generation_id,
                user_id=user.id,
                prompt=prompt,
                photo_key=photo_key,
                idempotency_key=idempotency_key,
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
        found = await records.generation_by_key(conn, user.id, idempotency_key)
        assert found is not None
        return await _repeat(request, temporal, settings, found)

    generation = await records.generation(conn, generation_id)
    assert generation is not None
    await start_or_refund(conn, temporal, settings, generation)
    log.info("generation started", extra={"generation_id": generation_id, "user_id": user.id})
    return _created(request, generation)


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
    request: Request, temporal: Client, settings: Settings, generation: records.Generation
) -> GenerationCreated:
    """A retried request: same generation, no new charge. If the first attempt died
    between charging and starting, start now."""
    if generation.status == "queued":
        async with request.app.state.db.connection() as conn:
            await start_or_refund(conn, temporal, settings, generation)
    return _created(request, generation)


async def owned_generation(conn: Conn, generation_id: UUID, user_id: UUID) -> records.Generation:
    """The caller's generation, or 404 (another user's looks exactly like a missing one)."""
    generation = await records.generation(conn, generation_id)
    if generation is None or generation.user_id != user_id:
        raise NotFound("No such generation.")
    return generation


@router.get("/{generation_id}", response_model=GenerationPublic)
async def get_generation(generation_id: UUID, user: CurrentUser, conn: ConnDep) -> GenerationPublic:
    generation = await owned_generation(conn, generation_id, user.id)
    return GenerationPublic(
        id=generation.id,
        status=generation.status,  # type: ignore[arg-type]
        step=generation.step,
        error=generation.error,
        character_id=generation.character_id,
    )
