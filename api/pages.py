"""The web app's pages: one HTML shell for every app path (api/web/app.js picks the
view from the path) and the public share page, both on the public HTTP contract, plus
their static files. Nothing is loaded from another host, and the pages' Content
Security Policy says so."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

WEB = Path(__file__).parent / "web"
PAGE_POLICY = "; ".join(
    (
        "default-src 'self'",
        "img-src 'self' blob: data:",  # the photo's preview is a blob: URL
        "media-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
# The app's paths (app.js's routes); anything else under / is the API's or a 404.
APP_PATHS = (
    "/",
    "/login",
    "/signup",
    "/gallery",
    "/account",
    "/verify-email",
    "/reset-password",
    "/generations/{generation_id}",
    "/characters/{character_id}",
)
PAGE_HEADERS = {"Content-Security-Policy": PAGE_POLICY, "Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)
_APP = (WEB / "app.html").read_text()
_SHARE = (WEB / "share.html").read_text()


async def app_page() -> HTMLResponse:
    return HTMLResponse(_APP, headers=PAGE_HEADERS)


async def share_page(slug: str) -> HTMLResponse:
    # The same page whatever the slug: share.js asks the API, so this answer reveals
    # nothing of whether something is shared here.
    return HTMLResponse(_SHARE, headers=PAGE_HEADERS)


for _path in APP_PATHS:
    router.add_api_route(_path, app_page, methods=["GET"])
router.add_api_route("/s/{slug}", share_page, methods=["GET"])


class _StaticFiles(StaticFiles):
    """The app's scripts and styles: revalidated on each load (ETag), so a new release
    is picked up at once."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Cache-Control"] = "no-cache"
        return response


def install_pages(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/static", _StaticFiles(directory=WEB), name="static")
