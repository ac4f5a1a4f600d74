"""The Chrome extension (chrome-extension/, Manifest V3) loaded unpacked in Debian's
Chromium, paired with a real account that has one real character: the buddy walks on
ordinary pages and on pages whose Content-Security-Policy forbids every image, lets clicks
through to the page, can be dragged, never doubles in a frame, is listed and switched in
the popup, and leaves once its token is revoked. Screenshots go to tests/output/screenshots/.
"""

from __future__ import annotations

import asyncio
import io
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from playwright.async_api import BrowserContext, Page, async_playwright, expect

from tests.conftest import Stack
from tests.support.browser import screenshot
from tests.support.client import User, signup
from tests.support.extension import (
    EXTENSION_ID,
    TAG,
    Pages,
    chromium_with_extension,
    serve_pages,
    service_worker,
)
from tests.support.photos import photo

PROMPT = "a tiny knight who walks on web pages"
WAIT_MS = 10_000  # any one thing the browser should do
TEST_SECONDS = 40  # any one test, whatever hangs
REVALIDATE_SECONDS = 5  # chrome-extension/config.js REVALIDATE_MS
BUDDY = 96  # px, the buddy's box (content.js SIZE)

PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{margin:0;font:16px sans-serif;background:#f4f1ea}}
p{{margin:8px 16px}}
#poke{{position:fixed;left:452px;bottom:16px;width:96px;height:48px}}</style></head>
<body><h1>{title}</h1>{body}
<button id="poke" type="button">Poke</button>
<p id="pokes">0</p>{tail}
</body></html>"""
# The script of the plain page; the strict page carries none (its CSP would refuse it)
# and counts clicks nowhere: it proves only that the buddy shows.
COUNTER = """<script>
document.getElementById('poke').addEventListener('click', () => {
  const out = document.getElementById('pokes'); out.textContent = +out.textContent + 1;
});
</script>"""
STRICT_CSP = "default-src 'none'; img-src 'none'; media-src 'none'"


def _page(title: str, body: str = "", *, tail: str = "", styled: bool = True) -> str:
    html = PAGE.format(title=title, body=body + "<p>" + "Lorem ipsum. " * 40 + "</p>", tail=tail)
    return html if styled else html.replace(html[html.index("<style>") : html.index("</head>")], "")


ROUTES: dict[str, Any] = {
    "/plain": lambda: (_page("A plain page", tail=COUNTER), {}),
    "/strict": lambda: (
        _page("A strict page", styled=False),
        {"Content-Security-Policy": STRICT_CSP},
    ),
    "/framed": lambda: (_page("A page with a frame", '<iframe src="/inner"></iframe>'), {}),
    "/inner": lambda: ("<!doctype html><title>inner</title><p>inside a frame</p>", {}),
}


@dataclass
class Paired:
    context: BrowserContext
    pages: Pages
    api: httpx.AsyncClient
    user: User
    device_token_id: str  # the one the extension holds
    character_id: str


async def _make_character(user: User) -> str:
    started = await user.generate(photo("astronaut.png"), PROMPT)
    assert started.status_code == 202, started.text
    async with asyncio.timeout(120):
        events = await user.events(started.json()["id"])
    assert events[-1].event == "completed", events[-1]
    return str(events[-1].data["character_id"])


async def _send_to_extension(page: Page, message: dict[str, Any]) -> dict[str, Any]:
    """What the web app does: chrome.runtime.sendMessage to the extension's id."""
    answer: dict[str, Any] = await page.evaluate(
        "([id, message]) => chrome.runtime.sendMessage(id, message)", [EXTENSION_ID, message]
    )
    return answer


@pytest.fixture(scope="module")
async def paired(stack: Stack) -> AsyncIterator[Paired]:
    """One account with one character, and one browser whose extension is paired with it
    through the web app's message, as the account page pairs it."""
    async with (
        httpx.AsyncClient(base_url=stack.cfg.api_url, timeout=30.0) as api,
        async_playwright() as playwright,
    ):
        user = await signup(api)
        character_task = asyncio.create_task(_make_character(user))
        with (
            tempfile.TemporaryDirectory(prefix="bitbuddies-ext-") as profile,
            serve_pages(ROUTES) as pages,
        ):
            async with chromium_with_extension(playwright, Path(profile)) as context:
                context.set_default_timeout(WAIT_MS)
                await service_worker(context)
                character_id = await character_task
                made = await api.post(
                    "/v1/tokens", json={"name": "Chrome extension"}, headers=user.headers
                )
                assert made.status_code == 201, made.text
                device = made.json()

                page = await context.new_page()
                # the web app's origin (its log-in page, where the app sends a stranger)
                await page.goto(stack.cfg.api_url + "/login")
                await page.wait_for_load_state("networkidle")
                hello = await _send_to_extension(page, {"type": "bitbuddies:hello"})
                assert hello["ok"] is True
                assert hello["paired"] is False
                answer = await _send_to_extension(
                    page,
                    {"type": "bitbuddies:pair", "token": device["token"], "name": "Chrome"},
                )
                assert answer == {"ok": True}
                hello = await _send_to_extension(page, {"type": "bitbuddies:hello"})
                assert hello["paired"] is True
                assert device["token"] not in await page.content()
                await page.close()
                yield Paired(context, pages, api, user, str(device["id"]), character_id)


async def _buddy_count(page: Page) -> int:
    count: int = await page.evaluate(
        "tag => document.documentElement.querySelectorAll(':scope > ' + tag).length", TAG
    )
    return count


async def _wait_for_buddy(page: Page) -> dict[str, float]:
    await page.wait_for_function(
        """tag => {
            const b = document.querySelector(tag);
            return b && getComputedStyle(b).display !== 'none'
                && b.getBoundingClientRect().width > 0;
        }""",
        arg=TAG,
        timeout=WAIT_MS,
    )
    return await _rect(page)


async def _rect(page: Page) -> dict[str, float]:
    rect: dict[str, float] = await page.evaluate(
        "tag => document.querySelector(tag).getBoundingClientRect().toJSON()", TAG
    )
    return rect


async def _wait_until_moved(page: Page, start: dict[str, float], px: float = 10) -> None:
    await page.wait_for_function(
        """([tag, x, y, px]) => {
            const r = document.querySelector(tag).getBoundingClientRect();
            return Math.hypot(r.x - x, r.y - y) > px;
        }""",
        arg=[TAG, start["x"], start["y"], px],
        timeout=WAIT_MS,
    )


async def _drawn_pixels(page: Page, rect: dict[str, float]) -> int:
    """How many pixels in the buddy's box are not the page's background: the picture is
    drawn (its <img> is in a closed shadow root, so the page's own scripts cannot see it)."""
    shot = await page.screenshot(
        clip={"x": rect["x"], "y": rect["y"], "width": rect["width"], "height": rect["height"]}
    )
    image = Image.open(io.BytesIO(shot)).convert("RGB")
    background = (0xF4, 0xF1, 0xEA)
    drawn = 0
    for pixel in image.get_flattened_data():
        assert isinstance(pixel, tuple)
        if max(abs(int(a) - b) for a, b in zip(pixel, background, strict=True)) > 24:
            drawn += 1
    return drawn


async def _stats(context: BrowserContext) -> dict[str, int]:
    worker = await service_worker(context)
    stats: dict[str, int] = await worker.evaluate("({...globalThis.bitbuddiesStats})")
    return stats


async def _wait_until_revoked(paired: Paired, token_id: str) -> None:
    for _ in range(50):
        listed = await paired.api.get("/v1/tokens", headers=paired.user.headers)
        if token_id not in {t["id"] for t in listed.json()["tokens"]}:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"device token {token_id} is still listed")


async def test_buddy_appears_walks_and_comes_from_the_cache(paired: Paired) -> None:
    async with asyncio.timeout(TEST_SECONDS):
        page = await paired.context.new_page()
        await page.goto(paired.pages.url("/plain"))
        start = await _wait_for_buddy(page)
        assert await _buddy_count(page) == 1
        viewport = page.viewport_size
        assert viewport is not None
        assert abs(start["bottom"] - viewport["height"]) <= 1  # along the bottom
        assert await _drawn_pixels(page, start) > 200
        await _wait_until_moved(page, start)
        await screenshot(page, "extension-buddy-plain-page")

        # Later pages get it at once from the extension's cache: no second download.
        before = await _stats(paired.context)
        for _ in range(3):
            await page.goto(paired.pages.url("/plain"))
            await _wait_for_buddy(page)
        after = await _stats(paired.context)
        assert after["assetFetches"] == before["assetFetches"]
        assert after["listFetches"] - before["listFetches"] <= 1  # at most one per 5 s
        await page.close()


async def test_buddy_shows_and_moves_under_a_csp_that_forbids_every_image(
    paired: Paired,
) -> None:
    async with asyncio.timeout(TEST_SECONDS):
        page = await paired.context.new_page()
        refused: list[str] = []
        page.on(
            "console", lambda m: refused.append(m.text) if "Content Security" in m.text else None
        )
        response = await page.goto(paired.pages.url("/strict"))
        assert response is not None
        assert response.headers["content-security-policy"] == STRICT_CSP
        start = await _wait_for_buddy(page)
        assert await _drawn_pixels(page, start) > 200
        await _wait_until_moved(page, start)
        await screenshot(page, "extension-buddy-strict-csp")
        assert refused == []
        await page.close()


async def test_a_click_beside_the_buddy_reaches_the_page(paired: Paired) -> None:
    async with asyncio.timeout(TEST_SECONDS):
        page = await paired.context.new_page()
        await page.goto(paired.pages.url("/plain"))
        await _wait_for_buddy(page)
        button = await page.locator("#poke").bounding_box()
        assert button is not None
        viewport = page.viewport_size
        assert viewport is not None
        # the button lies on the buddy's path along the bottom
        assert button["y"] + button["height"] > viewport["height"] - BUDDY
        # wait for a moment when the buddy is clear of it (with a margin), then click
        await page.wait_for_function(
            """([tag, left, right]) => {
                const r = document.querySelector(tag).getBoundingClientRect();
                return r.right < left - 40 || r.left > right + 40;
            }""",
            arg=[TAG, button["x"], button["x"] + button["width"]],
            timeout=WAIT_MS,
        )
        await page.mouse.click(button["x"] + button["width"] / 2, button["y"] + 24)
        await expect(page.locator("#pokes")).to_have_text("1")
        # and a click on the empty part of the buddy's layer reaches the page too
        hit = await page.evaluate("([x, y]) => document.elementFromPoint(x, y).localName", [10, 10])
        assert hit != TAG
        await page.close()


async def test_dragging_the_buddy_moves_it_and_it_stays_there_for_a_moment(
    paired: Paired,
) -> None:
    async with asyncio.timeout(TEST_SECONDS):
        page = await paired.context.new_page()
        await page.goto(paired.pages.url("/plain"))
        rect = await _wait_for_buddy(page)
        await page.mouse.move(rect["x"] + BUDDY / 2, rect["y"] + BUDDY / 2)
        grabbed = await _rect(page)  # it walked a little since
        offset_x = rect["x"] + BUDDY / 2 - grabbed["x"]
        await page.mouse.down()
        await page.mouse.move(300, 200, steps=10)
        await page.mouse.up()
        dropped = await _rect(page)
        assert abs(dropped["x"] - (300 - offset_x)) <= 12, dropped
        assert abs(dropped["y"] + BUDDY / 2 - 200) <= 12, dropped
        await asyncio.sleep(1)
        still = await _rect(page)
        assert (still["x"], still["y"]) == (dropped["x"], dropped["y"])
        await screenshot(page, "extension-buddy-dropped")
        # then it falls back to the bottom and walks on
        viewport = page.viewport_size
        assert viewport is not None
        await page.wait_for_function(
            "([tag, h]) =>"
            " Math.abs(document.querySelector(tag).getBoundingClientRect().bottom - h) <= 1",
            arg=[TAG, viewport["height"]],
            timeout=WAIT_MS,
        )
        await page.close()


async def test_a_frame_gets_no_second_buddy(paired: Paired) -> None:
    async with asyncio.timeout(TEST_SECONDS):
        page = await paired.context.new_page()
        await page.goto(paired.pages.url("/framed"))
        await _wait_for_buddy(page)
        frame = page.frames[1]
        await frame.wait_for_load_state("load")
        await asyncio.sleep(0.5)  # past the frame's document_idle
        assert await _buddy_count(page) == 1
        assert await frame.evaluate(f"document.getElementsByTagName('{TAG}').length") == 0
        await page.close()


async def test_reduced_motion_sits_still_in_the_corner(paired: Paired) -> None:
    async with asyncio.timeout(TEST_SECONDS):
        page = await paired.context.new_page()
        await page.emulate_media(reduced_motion="reduce")
        await page.goto(paired.pages.url("/plain"))
        rect = await _wait_for_buddy(page)
        width = await page.evaluate("document.documentElement.clientWidth")
        assert abs(rect["right"] - width) <= 1
        await asyncio.sleep(1.5)
        assert await _rect(page) == rect
        await page.close()


async def test_popup_lists_the_character_and_switches_the_buddy_live(paired: Paired) -> None:
    async with asyncio.timeout(TEST_SECONDS):
        page = await paired.context.new_page()
        await page.goto(paired.pages.url("/plain"))
        await _wait_for_buddy(page)

        popup = await paired.context.new_page()
        await popup.set_viewport_size({"width": 360, "height": 520})
        await popup.goto(f"chrome-extension://{EXTENSION_ID}/popup.html?site=127.0.0.1")
        await expect(popup.get_by_role("heading", name="Paired")).to_be_visible()
        choice = popup.get_by_role("radio", name=PROMPT)
        await expect(choice).to_be_checked()
        await popup.wait_for_function(
            "() => document.querySelector('img.thumb').naturalWidth > 0", timeout=WAIT_MS
        )
        everywhere = popup.get_by_role("switch", name="Everywhere")
        this_site = popup.get_by_role("switch", name="On this site")
        await expect(everywhere).to_be_checked()
        await expect(this_site).to_be_checked()
        await screenshot(popup, "extension-popup")

        hidden = f"getComputedStyle(document.querySelector('{TAG}')).display === 'none'"
        await everywhere.uncheck()
        await page.wait_for_function(hidden, timeout=WAIT_MS)
        await everywhere.check()
        await _wait_for_buddy(page)
        await this_site.uncheck()
        await page.wait_for_function(hidden, timeout=WAIT_MS)
        await this_site.check()
        await _wait_for_buddy(page)
        await popup.close()
        await page.close()


async def test_buddy_hides_while_an_element_is_full_screen(paired: Paired) -> None:
    async with asyncio.timeout(TEST_SECONDS):
        page = await paired.context.new_page()
        await page.goto(paired.pages.url("/plain"))
        await _wait_for_buddy(page)
        await page.evaluate("document.body.requestFullscreen()")
        await page.wait_for_function(
            f"getComputedStyle(document.querySelector('{TAG}')).display === 'none'",
            timeout=WAIT_MS,
        )
        await page.evaluate("document.exitFullscreen()")
        await _wait_for_buddy(page)
        await page.close()


async def test_unpair_in_the_popup_revokes_its_own_token_and_forgets_it(
    paired: Paired, stack: Stack
) -> None:
    async with asyncio.timeout(TEST_SECONDS):
        made = await paired.api.post(
            "/v1/tokens", json={"name": "Chrome extension"}, headers=paired.user.headers
        )
        assert made.status_code == 201, made.text
        second = made.json()
        web = await paired.context.new_page()
        await web.goto(stack.cfg.api_url + "/login")
        await web.wait_for_load_state("networkidle")
        pair = {"type": "bitbuddies:pair", "token": second["token"], "name": "Chrome"}
        assert await _send_to_extension(web, pair) == {"ok": True}
        routes = (await paired.api.get("/openapi.json")).json()["paths"]
        landed = "/v1/tokens/current" in routes  # the server's side of pairing
        if landed:  # a pairing that replaces another revokes the token it replaced
            await _wait_until_revoked(paired, paired.device_token_id)

        popup = await paired.context.new_page()
        await popup.goto(f"chrome-extension://{EXTENSION_ID}/popup.html")
        await expect(popup.get_by_role("radio", name=PROMPT)).to_be_checked()
        await popup.get_by_role("button", name="Unpair").click()
        await expect(popup.get_by_label("Pairing code")).to_be_visible()
        assert (await _send_to_extension(web, {"type": "bitbuddies:hello"}))["paired"] is False
        if landed:
            await expect(popup.get_by_role("status")).to_have_text("Unpaired.")
            await _wait_until_revoked(paired, second["id"])

        # a wrong pairing code is refused with a message, and nothing is kept
        await popup.get_by_label("Pairing code").fill("WRONG-CODE")
        await popup.get_by_role("button", name="Pair").click()
        await expect(popup.get_by_role("alert")).not_to_be_empty()
        await screenshot(popup, "extension-popup-wrong-code")
        assert (await _send_to_extension(web, {"type": "bitbuddies:hello"}))["paired"] is False

        # a new device token, paired for the next test
        made = await paired.api.post(
            "/v1/tokens", json={"name": "Chrome extension"}, headers=paired.user.headers
        )
        assert made.status_code == 201, made.text
        paired.device_token_id = made.json()["id"]
        pair["token"] = made.json()["token"]
        assert await _send_to_extension(web, pair) == {"ok": True}
        await popup.close()
        await web.close()


async def test_revoking_the_token_removes_the_buddy_on_the_next_page(paired: Paired) -> None:
    async with asyncio.timeout(TEST_SECONDS):
        page = await paired.context.new_page()
        await page.goto(paired.pages.url("/plain"))
        await _wait_for_buddy(page)

        revoked = await paired.api.delete(
            f"/v1/tokens/{paired.device_token_id}", headers=paired.user.headers
        )
        assert revoked.status_code == 204, revoked.text
        await asyncio.sleep(REVALIDATE_SECONDS + 0.5)  # the next check is due

        await page.goto(paired.pages.url("/plain"))
        worker = await service_worker(paired.context)
        await worker.evaluate(
            """async () => {
                for (let i = 0; i < 100; i++) {
                    if (!(await chrome.storage.local.get('pairing')).pairing) return;
                    await new Promise(r => setTimeout(r, 100));
                }
                throw new Error('the token is still kept');
            }"""
        )
        await asyncio.sleep(0.5)  # the page's answer is on its way
        assert await _buddy_count(page) == 0
        assert await worker.evaluate("caches.keys()") == []
        await page.goto(paired.pages.url("/strict"))
        await asyncio.sleep(1)
        assert await _buddy_count(page) == 0

        popup = await paired.context.new_page()
        await popup.goto(f"chrome-extension://{EXTENSION_ID}/popup.html")
        await expect(popup.get_by_label("Pairing code")).to_be_visible()
        await popup.close()
        await page.close()


async def test_after_a_revoke_the_web_apps_button_and_a_typed_code_each_pair_it_again(
    paired: Paired, stack: Stack
) -> None:
    """The two ways a person pairs, end to end with the real extension: the account
    page's "Connect the extension" (it messages the installed extension), and, after an
    Unpair, the pairing code the API makes typed into the popup. Each brings the buddy
    back on the next page. Runs after the revoke test: the extension starts unpaired."""
    async with asyncio.timeout(TEST_SECONDS * 2):
        web = await paired.context.new_page()
        await web.goto(stack.cfg.api_url + "/login")
        await web.get_by_label("Email", exact=True).fill(paired.user.email)
        await web.get_by_label("Password", exact=True).fill("correct horse")
        await web.get_by_role("button", name="Log in").click()
        await expect(web.get_by_role("heading", name="Make a BitBuddy")).to_be_visible()
        await web.goto(stack.cfg.api_url + "/account")
        await web.get_by_role("button", name="Connect the extension").click()
        await expect(web.locator("#connect-status")).to_contain_text("Connected")
        page = await paired.context.new_page()
        await page.goto(paired.pages.url("/plain"))
        await _wait_for_buddy(page)

        popup = await paired.context.new_page()
        await popup.goto(f"chrome-extension://{EXTENSION_ID}/popup.html")
        await popup.get_by_role("button", name="Unpair").click()
        await expect(popup.get_by_label("Pairing code")).to_be_visible()
        made = await paired.api.post("/v1/tokens/pairing-codes", headers=paired.user.headers)
        assert made.status_code == 201, made.text
        await popup.get_by_label("Server address").fill(stack.cfg.api_url)
        await popup.get_by_label("Pairing code").fill(made.json()["code"].lower())
        await popup.get_by_role("button", name="Pair").click()
        await expect(popup.get_by_label("Pairing code")).to_be_hidden()
        await page.goto(paired.pages.url("/strict"))
        await _wait_for_buddy(page)
        for opened in (popup, page, web):
            await opened.close()
