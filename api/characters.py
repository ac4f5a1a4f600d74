"""A user's characters: listed, read, their assets fetched by their owner (signed
links, or per request with the owner's credentials), and their public share page
switched on or off."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from api.deps import ConnDep, CurrentUser, SettingsDep, StorageDep
from api.errors import documented
from api.files import object_response
from api.schemas import (
    CharacterAssets,
    CharacterList,
    CharacterPublic,
    ShareChange,
    ShareState,
)
from api.services.errors import NotFound
from infra.database import records
from infra.settings import Settings
from infra.storage import Storage
from infra.storage.cdn import asset_url

router = APIRouter(prefix="/v1/characters", tags=["characters"])
# Short: a link that leaks (a shared screenshot, a proxy log) soon stops working; a client
# asks for the character again for fresh ones, or uses the per-request asset route.
ASSET_URL_TTL = timedelta(minutes=15)
SHARE_SLUG_BYTES = 12  # 96 random bits: a share page cannot be guessed

AssetFormat = Literal["webm", "webp", "png"]
CONTENT_TYPES: dict[str, str] = {"webm": "video/webm", "webp": "image/webp", "png": "image/png"}


def asset_key(character: records.Character, fmt: AssetFormat) -> str:
    return {"webm": character.webm_key, "webp": character.webp_key, "png": character.png_key}[fmt]


def share_url(settings: Settings, character: records.Character) -> str | None:
    if not character.shared or character.share_slug is None:
        return None
    return f"{settings.public_url.rstrip('/')}/s/{character.share_slug}"


def _public(settings: Settings, storage: Storage, character: records.Character) -> CharacterPublic:
    def url(fmt: AssetFormat) -> str:
        return asset_url(
            settings,
            storage,
            asset_key(character, fmt),
            expires_in=ASSET_URL_TTL,
            content_type=CONTENT_TYPES[fmt],
        )

    return CharacterPublic(
        id=character.id,
        prompt=character.prompt,
        created_at=character.created_at,
        assets=CharacterAssets(webm=url("webm"), webp=url("webp"), png=url("png")),
        shared=character.shared,
        share_url=share_url(settings, character),
    )


async def _owned(conn: ConnDep, character_id: UUID, user: records.User) -> records.Character:
    character = await records.character_for_user(conn, character_id, user.id)
    if character is None:
        raise NotFound("No such character.")
    return character


@router.get("", response_model=CharacterList, responses=documented(401))
async def list_characters(
    user: CurrentUser, conn: ConnDep, storage: StorageDep, settings: SettingsDep
) -> CharacterList:
    found = await records.characters_for_user(conn, user.id)
    return CharacterList(characters=[_public(settings, storage, c) for c in found])


@router.get("/{character_id}", response_model=CharacterPublic, responses=documented(401, 404, 422))
async def get_character(
    character_id: UUID, user: CurrentUser, conn: ConnDep, storage: StorageDep, settings: SettingsDep
) -> CharacterPublic:
    return _public(settings, storage, await _owned(conn, character_id, user))


@router.get(
    "/{character_id}/assets/{fmt}",
    response_class=StreamingResponse,
    responses=documented(401, 404, 422),
)
async def get_asset(
    character_id: UUID,
    fmt: AssetFormat,
    user: CurrentUser,
    conn: ConnDep,
    storage: StorageDep,
    download: Annotated[bool, Query(description="Send it as a file to save")] = False,
) -> StreamingResponse:
    """One of the character's files, to its owner (a browser session's cookie or a
    bearer token)."""
    character = await _owned(conn, character_id, user)
    return await object_response(
        storage,
        asset_key(character, fmt),
        content_type=CONTENT_TYPES[fmt],
        cache="private, max-age=3600",
        download_as=f"bitbuddy-{str(character.id)[:8]}.{fmt}" if download else None,
    )


@router.put(
    "/{character_id}/share",
    response_model=ShareState,
    responses=documented(401, 403, 404, 422),
)
async def set_share(
    character_id: UUID, body: ShareChange, user: CurrentUser, conn: ConnDep, settings: SettingsDep
) -> ShareState:
    """Switch the character's public share page (/s/...) on or off. Off by default; its
    address stays the same when it is switched back on."""
    character = await records.set_character_shared(
        conn,
        character_id,
        user.id,
        shared=body.shared,
        new_slug=secrets.token_urlsafe(SHARE_SLUG_BYTES),
    )
    if character is None:
        raise NotFound("No such character.")
    await conn.commit()
    return ShareState(shared=character.shared, share_url=share_url(settings, character))
