"""The Chrome extension (chrome-extension/) loaded unpacked in Debian's Chromium, and a tiny
local web server for the pages it walks on. Shared by tests/e2e/test_extension.py and
bench/extension_cost.py."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from playwright.async_api import BrowserContext, Playwright, Worker

from tests.support.browser import CHROMIUM
from tests.support.paths import REPO

EXTENSION = REPO / "chrome-extension"
# Fixed by the manifest's "key": the API's CORS and the web app's messages name it.
EXTENSION_ID = "ighhgfpcngbokfoplnnjnpnnngdebald"
TAG = "bitbuddies-buddy"


@asynccontextmanager
async def chromium_with_extension(
    playwright: Playwright, profile: Path, *, extension: bool = True
) -> AsyncIterator[BrowserContext]:
    """A persistent context (extensions need one) in new headless mode, with the unpacked
    extension, or without any extension at all (``extension=False``, the baseline)."""
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: `make test` installs Debian's chromium")
    args = (
        [f"--disable-extensions-except={EXTENSION}", f"--load-extension={EXTENSION}"]
        if extension
        else []
    )
    context = await playwright.chromium.launch_persistent_context(
        str(profile),
        executable_path=str(CHROMIUM),
        headless=True,
        args=args,
        viewport={"width": 1000, "height": 700},
    )
    try:
        yield context
    finally:
        await context.close()


async def service_worker(context: BrowserContext, timeout_ms: float = 10_000) -> Worker:
    """The extension's service worker (a fresh handle if Chromium restarted it)."""
    for worker in context.service_workers:
        if worker.url.startswith(f"chrome-extension://{EXTENSION_ID}/"):
            return worker
    return await context.wait_for_event("serviceworker", timeout=timeout_ms)


# -> (body, headers): a str is HTML unless the headers name another Content-Type
Route = Callable[[], tuple[str | bytes, dict[str, str]]]


@dataclass
class Pages:
    """Pages served from 127.0.0.1 on a free port: ``url("/name")``."""

    base_url: str

    def url(self, path: str) -> str:
        return self.base_url + path


@contextmanager
def serve_pages(routes: Mapping[str, Route]) -> Iterator[Pages]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            route = routes.get(self.path.split("?", 1)[0])
            if route is None:
                self.send_error(404)
                return
            content, headers = route()
            body = content.encode() if isinstance(content, str) else content
            self.send_response(200)
            if "Content-Type" not in headers:
                self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Pages(f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
