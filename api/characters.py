"""A user's characters, with URLs the owner can fetch (signed, short-lived)."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

from fastapi import APIRouter

from api.deps import ConnDep, CurrentUser, StorageDep
from api.errors import documented
from api.schemas import CharacterAssets, CharacterList, CharacterPublic
from api.services.errors import NotFound
from infra.database import records
from infra.storage import Storage

router = APIRouter(prefix="/v1/characters", tags=["characters"])
ASSET_URL_TTL = timedelta(hours=12)


def _public(storage: Storage, character: records.Character) -> CharacterPublic:
    def url(key: str, content_type: str) -> str:
        return storage.signed_url(key, expires_in=ASSET_URL_TTL, content_type=content_type)

    return CharacterPublic(
        id=character.id,
        prompt=character.prompt,
        created_at=character.created_at,
        assets=CharacterAssets(
            webm=url(character.webm_key, "video/webm"),
            webp=url(character.webp_key, "image/webp"),
            png=url(character.png_key, "image/png"),
        ),
    )


@router.get("", response_model=CharacterList, responses=documented(401))
async def list_characters(user: CurrentUser, conn: ConnDep, storage: StorageDep) -> CharacterList:
    found = await records.characters_for_user(conn, user.id)
    return CharacterList(characters=[_public(storage, c) for c in found])


@router.get("/{character_id}", response_model=CharacterPublic, responses=documented(401, 404, 422))
async def get_character(
    character_id: UUID, user: CurrentUser, conn: ConnDep, storage: StorageDep
) -> CharacterPublic:
    character = await records.character_for_user(conn, character_id, user.id)
    if character is None:
        raise NotFound("No such character.")
    return _public(storage, character)
