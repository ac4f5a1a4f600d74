"""The generations routes: HTTP in, a call to GenerationService
(api/services/generations.py), HTTP out."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, File, Form, Header, Request, UploadFile, status
from fastapi.responses import StreamingResponse

from api import limits
from api.deps import (
    ConnDep,
    CurrentUser,
    CurrentUserAlone,
    GenerationsDep,
    SettingsDep,
    StorageDep,
)
from api.errors import documented
from api.files import object_response
from api.schemas import GenerationCreated, GenerationPublic
from api.services.errors import NotFound
from api.services.generations import StartRequest, owned_generation
from infra.database import records
from infra.settings import Settings
from infra.storage import keys
from workflows.contract import PICTURE_NAMES

router = APIRouter(prefix="/v1/generations", tags=["generations"])


def _created(settings: Settings, generation: records.Generation) -> GenerationCreated:
    # Built from the configured public URL, never from the request's Host header.
    base = settings.public_url.rstrip("/")
    return GenerationCreated(
        id=generation.id,
        status=generation.status,
        events_url=f"{base}/v1/generations/{generation.id}/events",
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
    generations: GenerationsDep,
    settings: SettingsDep,
    photo: Annotated[UploadFile, File(description="JPEG, PNG or WebP, up to 20 MB")],
    prompt: Annotated[str, Form(description="What your BitBuddy should be like")],
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> GenerationCreated:
    async def admit() -> None:
        await limits.start_allowed(request, str(user.id))

    generation = await generations.start(
        StartRequest(user_id=user.id, prompt=prompt, photo=photo, idempotency_key=idempotency_key),
        admit=admit,
    )
    return _created(settings, generation)


def _public(generation: records.Generation) -> GenerationPublic:
    return GenerationPublic(
        id=generation.id,
        status=generation.status,
        step=generation.step,
        error=generation.error,
        character_id=generation.character_id,
    )


@router.get(
    "/{generation_id}",
    response_model=GenerationPublic,
    responses=documented(401, 404, 422),
)
async def get_generation(generation_id: UUID, user: CurrentUser, conn: ConnDep) -> GenerationPublic:
    return _public(await owned_generation(conn, generation_id, user.id))


@router.post(
    "/{generation_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=GenerationPublic,
    responses=documented(
        401,
        403,
        404,
        409,
        422,
        503,
        s409="It has already ended (already_ended)",
        s503="Temporal could not be asked; nothing changed, retry",
    ),
)
async def cancel_generation(
    generation_id: UUID, user: CurrentUser, generations: GenerationsDep
) -> GenerationPublic:
    """Stop it: it ends at its next safe point with a ``cancelled`` event and its token
    refunded; the provider's job is cancelled too. Follow its events for the end."""
    return _public(await generations.cancel(user.id, generation_id))


@router.get(
    "/{generation_id}/pictures/{name}",
    response_class=StreamingResponse,
    responses=documented(
        401, 404, 422, s404="No such generation, or the picture is not made (or gone)"
    ),
)
async def get_picture(
    generation_id: UUID, name: str, user: CurrentUser, conn: ConnDep, storage: StorageDep
) -> StreamingResponse:
    """A picture made on the way (the photo, the cartoon, the cut-out), announced by a
    progress event's ``picture``; to the generation's owner, while it runs and until its
    working files are deleted."""
    await owned_generation(conn, generation_id, user.id)
    if name not in PICTURE_NAMES:
        raise NotFound("No such picture.")
    return await object_response(
        storage,
        keys.picture(generation_id, name),
        content_type="image/png",
        cache="private, max-age=600",
    )
