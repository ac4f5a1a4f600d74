"""Serves local-storage objects behind signed URLs (the local stand-in for GCS signed
URLs). With GCS the signed URLs point at Google and this route is never used."""

from __future__ import annotations

import mimetypes
import time
from collections.abc import Mapping
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from api.deps import SettingsDep, StorageDep
from api.errors import documented
from api.services.errors import NotFound, NotSignedIn
from infra.storage import ObjectNotFound, Storage
from infra.storage.local import verify_signature

router = APIRouter(prefix="/v1/files", tags=["files"])


@router.get(
    "/{key:path}",
    response_class=StreamingResponse,
    responses=documented(401, 404, 422, s401="The link is invalid or has expired"),
)
async def get_file(
    request: Request,
    key: str,
    settings: SettingsDep,
    storage: StorageDep,
    expires: Annotated[int, Query()],
    sig: Annotated[str, Query()],
) -> StreamingResponse:
    secret = settings.signing_secret.get_secret_value()
    if not verify_signature(key, expires, sig, secret=secret, now=time.time()):
        raise NotSignedIn("This link is invalid or has expired.")
    content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
    return await object_response(
        storage,
        key,
        content_type=content_type,
        cache="private, max-age=3600",
        # a signed link is its own authorisation: any origin may fetch it
        extra={"Access-Control-Allow-Origin": "*"},
    )


async def object_response(
    storage: Storage,
    key: str,
    *,
    content_type: str,
    cache: str,
    download_as: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> StreamingResponse:
    """One stored object, streamed (memory flat whatever its size); 404 when it is not
    there (or no longer: working files go once a generation has ended)."""
    try:
        size = await storage.size(key)
    except (ObjectNotFound, ValueError) as err:
        raise NotFound("No such file.") from err
    headers = {"Content-Length": str(size), "Cache-Control": cache, **(extra or {})}
    if download_as is not None:
        headers["Content-Disposition"] = f'attachment; filename="{download_as}"'
    return StreamingResponse(storage.read_stream(key), media_type=content_type, headers=headers)
