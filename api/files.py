"""Serves local-storage objects behind signed URLs (the local stand-in for GCS signed
URLs). With GCS the signed URLs point at Google and this route is never used."""

from __future__ import annotations

import mimetypes
import time
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from api.deps import SettingsDep, StorageDep
from api.errors import documented
from api.services.errors import NotFound, NotSignedIn
from infra.storage import ObjectNotFound
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
    try:
        size = await storage.size(key)
    except (ObjectNotFound, ValueError) as err:
        raise NotFound("No such file.") from err
    content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
    return StreamingResponse(
        storage.read_stream(key),
        media_type=content_type,
        headers={
            "Content-Length": str(size),
            "Cache-Control": "private, max-age=3600",
            "Access-Control-Allow-Origin": "*",
        },
    )
