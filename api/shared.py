"""A shared character, for anyone with its share page's address (the page a sticker's
QR code points at): its animation and its size, nothing of its owner, and only while
its owner keeps sharing on. Its files are served per request, so switching sharing off
ends access at once (a signed link would outlive it)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from api.characters import CONTENT_TYPES, AssetFormat, asset_key
from api.deps import ConnDep, StorageDep
from api.errors import documented
from api.files import object_response
from api.schemas import CharacterAssets, SharedCharacter
from api.services.errors import NotFound
from infra.database import records

router = APIRouter(prefix="/v1/shared", tags=["sharing"])
SHARED_CACHE = "public, max-age=60"  # short: switching sharing off takes effect soon


async def _shared(conn: ConnDep, slug: str) -> records.Character:
    character = await records.shared_character(conn, slug)
    if character is None:
        raise NotFound("Nothing is shared here.")
    return character


@router.get("/{slug}", response_model=SharedCharacter, responses=documented(404))
async def get_shared(slug: str, conn: ConnDep) -> SharedCharacter:
    character = await _shared(conn, slug)
    base = f"/v1/shared/{slug}"
    return SharedCharacter(
        assets=CharacterAssets(webm=f"{base}/webm", webp=f"{base}/webp", png=f"{base}/png"),
        width=character.width,
        height=character.height,
    )


@router.get("/{slug}/{fmt}", response_class=StreamingResponse, responses=documented(404, 422))
async def get_shared_asset(
    slug: str, fmt: AssetFormat, conn: ConnDep, storage: StorageDep
) -> StreamingResponse:
    character = await _shared(conn, slug)
    return await object_response(
        storage, asset_key(character, fmt), content_type=CONTENT_TYPES[fmt], cache=SHARED_CACHE
    )
