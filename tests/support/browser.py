"""A real browser for the web app's tests: Debian's Chromium (/usr/bin/chromium, which
`make test` installs) driven by Playwright, never a browser Playwright downloads."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from tests.support.paths import OUTPUT

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = OUTPUT / "screenshots"


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: `make test` installs Debian's chromium")
    async with async_playwright() as playwright:
        # New headless mode; Playwright adds --no-sandbox, which running as root needs.
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class Visit:
    """A browser context on the API's origin that records every host it asked."""

    context: BrowserContext
    page: Page
    hosts: set[str] = field(default_factory=set)  # every network host (not blob: or data:)

    def asked(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("blob", "data"):
            self.hosts.add(parts.netloc)


@asynccontextmanager
async def visit(browser: Browser, base_url: str) -> AsyncIterator[Visit]:
    context = await browser.new_context(base_url=base_url, viewport={"width": 1000, "height": 900})
    page = await context.new_page()
    seen = Visit(context, page)
    page.on("request", lambda request: seen.asked(request.url))
    try:
        yield seen
    finally:
        await context.close()


async def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{re.sub(r'[^a-z0-9-]+', '-', name)}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
