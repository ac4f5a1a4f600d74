"""The web app in a real browser (Debian's Chromium, Playwright): a newcomer signs up,
makes a BitBuddy while watching every step and picture arrive, sees it animate in the
gallery and shares it; a refused photo says the token came back; a dropped event
stream resumes without a gap or a repeat. Screenshots go to tests/output/screenshots/."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.async_api import Browser, Page, Route, expect

from tests.conftest import Stack
from tests.support.browser import chromium, screenshot, visit
from tests.support.client import signup
from tests.support.mailbox import Mailbox, link_of
from tests.support.paths import FIXTURES
from tests.support.photos import photo
from tests.support.steps import STEP_APPS
from workflows import contract

PASSWORD = "correct horse"  # what tests/support/client.py signs up with
RUN_TIMEOUT_MS = 180_000


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


async def _sign_up(page: Page) -> str:
    email = f"web-{uuid.uuid4().hex[:10]}@example.com"
    await page.goto("/signup")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign up").click()
    await expect(page.get_by_role("heading", name="Make a BitBuddy")).to_be_visible()
    return email


async def _choose_photo(page: Page, data: bytes, prompt: str) -> None:
    await page.get_by_label("Photo").set_input_files(
        files=[{"name": "me.png", "mimeType": "image/png", "buffer": data}]
    )
    preview = page.get_by_role("img", name="Your photo")
    await expect(preview).to_be_visible()
    await page.wait_for_function(
        "() => document.querySelector('#preview').naturalWidth > 0", timeout=10_000
    )
    await page.get_by_label("Prompt").fill(prompt)


async def _generate_held_at_animate(
    page: Page, models: httpx.AsyncClient, *, seconds: float, prompt: str
) -> str:
    """Sign up and start a generation whose animate job runs ``seconds``; returns its id
    once the page shows the animate step."""
    body = {
        "app": STEP_APPS[contract.ANIMATE.name],
        "kind": "delay",
        "times": 1,
        "seconds": seconds,
    }
    (await models.post("/_local/faults", json=body)).raise_for_status()
    await _sign_up(page)
    await _choose_photo(page, photo("astronaut.png"), prompt)
    await page.get_by_role("button", name="Generate").click()
    await page.wait_for_url(re.compile(r"/generations/[0-9a-f-]{36}$"))
    await expect(page.locator(f"#steps li[data-step={contract.ANIMATE.name}]")).to_have_count(
        1, timeout=RUN_TIMEOUT_MS
    )
    return page.url.rsplit("/", 1)[1]


def _sse(body: str) -> list[tuple[int, str, dict[str, Any]]]:
    """A finished event stream's events: (id, type, data)."""
    events = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            if name in ("id", "event", "data"):
                fields[name] = value.strip()
        if "id" in fields:
            events.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
    return events


async def _server_log(page: Page, generation_id: str) -> list[tuple[int, str, dict[str, Any]]]:
    """The generation's whole event log as the API streams it (with the page's cookie)."""
    answer = await page.request.get(f"/v1/generations/{generation_id}/events")
    assert answer.ok, answer.status
    return _sse(await answer.text())


async def _shown_events(page: Page) -> list[tuple[int, str]]:
    """The events the progress view shows, in order: (id, message)."""
    items = page.locator("#steps li")
    ids = await items.evaluate_all("els => els.map(e => Number(e.dataset.eventId))")
    texts = await items.all_inner_texts()
    return list(zip(ids, texts, strict=True))


async def _playing(page: Page, selector: str) -> None:
    """The video under ``selector`` plays: it has frames and its clock moves."""
    await page.wait_for_function(
        """sel => { const v = document.querySelector(sel);
                    return v && v.readyState >= 2 && v.currentTime > 0.2 && !v.paused; }""",
        arg=selector,
        timeout=20_000,
    )


async def test_a_newcomer_makes_watches_keeps_and_shares_a_bitbuddy(
    stack: Stack,
    browser: Browser,
    models: httpx.AsyncClient,  # resets the model server: no fault left by another test
) -> None:
    base = stack.cfg.api_url
    started = time.monotonic()
    async with visit(browser, base) as owner:
        page = owner.page
        email = await _sign_up(page)
        await expect(page.locator("#balance")).to_have_text("Balance: 3 tokens")
        await _choose_photo(page, photo("astronaut.png"), "a brave space explorer")
        await screenshot(page, "create")
        await page.get_by_role("button", name="Generate").click()
        await page.wait_for_url(re.compile(r"/generations/[0-9a-f-]{36}$"))
        generation_id = page.url.rsplit("/", 1)[1]

        # The cartoon shows long before the animation is ready.
        cartoon = page.locator("[data-picture=cartoon] img")
        await expect(cartoon).to_be_visible(timeout=RUN_TIMEOUT_MS)
        await page.wait_for_function(
            "() => document.querySelector('[data-picture=cartoon] img').naturalWidth > 0"
        )
        assert await page.locator("#view").get_attribute("data-outcome") is None
        await screenshot(page, "progress")
        await expect(page.locator("#view")).to_have_attribute(
            "data-outcome", "completed", timeout=RUN_TIMEOUT_MS
        )
        await expect(page.get_by_role("status")).to_have_text(contract.READY)
        assert await page.locator("#progress-bar").get_attribute("value") == "100"

        # Every event the API recorded, each shown once, in order; every step named.
        log = await _server_log(page, generation_id)
        shown = await _shown_events(page)
        assert shown == [(i, data["message"]) for i, _, data in log]
        assert [i for i, _ in shown] == list(range(1, len(log) + 1))
        steps = {data["step"] for _, _, data in log}
        assert set(STEP_APPS) - {contract.EXPAND.name} <= steps, steps
        # The pictures made on the way, each loaded: the photo, the cartoon, the cut-out.
        pictures = page.locator("#pictures figure")
        names = await pictures.evaluate_all("els => els.map(e => e.dataset.picture)")
        assert {"photo", "cartoon", "cutout"} <= set(names), names
        widths = await page.locator("#pictures img").evaluate_all(
            "els => els.map(e => e.naturalWidth)"
        )
        assert all(w > 0 for w in widths), widths
        await _playing(page, "#outcome video")

        # The gallery plays it over the checkered stage, with a download of each format.
        await page.get_by_role("link", name="Gallery", exact=True).first.click()
        card = page.locator("#gallery li").first
        character_id = await card.get_attribute("data-character")
        assert character_id
        await _playing(page, "#gallery video")
        await screenshot(page, "gallery")
        for fmt, content_type in (
            ("WebM", "video/webm"),
            ("animated WebP", "image/webp"),
            ("PNG", "image/png"),
        ):
            href = await card.get_by_role("link", name=fmt, exact=True).get_attribute("href")
            assert href
            answer = await page.request.get(href)
            assert answer.ok and answer.headers["content-type"] == content_type
            assert answer.headers["content-disposition"].startswith("attachment;")
            assert len(await answer.body()) > 100

        # The character page; sharing is off until its owner switches it on.
        await card.get_by_role("link", name=re.compile("^Open")).click()
        await page.wait_for_url(f"**/characters/{character_id}")
        share = page.get_by_label("Public share page")
        await expect(share).not_to_be_checked()
        await _playing(page, "#character video")
        await share.check()
        link = page.locator(".share-url a")
        await expect(link).to_have_attribute("href", re.compile(r"/s/[A-Za-z0-9_-]+$"))
        share_url = await link.get_attribute("href")
        assert share_url
        await screenshot(page, "character")
        assert owner.hosts == {urlsplit(base).netloc}, owner.hosts  # no third-party host

    # Logged out, anyone with the link sees the animation full size, and nothing else.
    async with visit(browser, base) as stranger:
        page = stranger.page
        await page.goto(share_url)
        await _playing(page, "#stage video")
        await screenshot(page, "share")
        html = await page.content()
        for secret in (email, "brave space explorer", character_id, generation_id):
            assert secret not in html
        shared = await page.request.get(f"/v1/shared/{share_url.rsplit('/', 1)[1]}")
        assert shared.ok
        assert set(json.loads(await shared.text())) == {"assets", "width", "height"}
        assert stranger.hosts == {urlsplit(base).netloc}, stranger.hosts
    print(f"\nbrowser flow: {time.monotonic() - started:.1f} s")


async def test_a_refused_photo_says_why_and_gives_the_token_back(
    stack: Stack, browser: Browser, models: httpx.AsyncClient
) -> None:
    async with visit(browser, stack.cfg.api_url) as visitor:
        page = visitor.page
        await _sign_up(page)
        await _choose_photo(page, (FIXTURES / "nsfw_probe.png").read_bytes(), "a beach day")
        await page.get_by_role("button", name="Generate").click()
        await expect(page.locator("#view")).to_have_attribute(
            "data-outcome", "failed", timeout=RUN_TIMEOUT_MS
        )
        alert = page.locator("#outcome [role=alert]")
        await expect(alert).to_contain_text(contract.NSFW_REFUSED)
        await expect(alert).to_contain_text(contract.REFUNDED)
        await expect(page.locator("#balance")).to_have_text("Balance: 3 tokens")
        await screenshot(page, "failure")


async def test_the_progress_view_resumes_after_the_api_restarts_without_a_gap_or_repeat(
    stack: Stack, browser: Browser, models: httpx.AsyncClient
) -> None:
    # Animate waits 6 s: the API goes down while the page is following the stream.
    async with visit(browser, stack.cfg.api_url) as visitor:
        page = visitor.page
        generation_id = await _generate_held_at_animate(
            page, models, seconds=6, prompt="a calm gardener"
        )
        before = await _shown_events(page)
        stack.restart_api(down_seconds=2.0)
        await expect(page.locator("#view")).to_have_attribute(
            "data-outcome", "completed", timeout=RUN_TIMEOUT_MS
        )
        shown = await _shown_events(page)
        log = await _server_log(page, generation_id)
        assert shown[: len(before)] == before
        assert shown == [(i, data["message"]) for i, _, data in log]
        assert [i for i, _ in shown] == list(range(1, len(log) + 1))
        assert len(shown) > len(before)  # events after the restart arrived too
        assert int(await page.locator("#view").get_attribute("data-drops") or 0) >= 1


# Every visible control has a name a screen reader reads: a label, aria-label or text.
UNLABELLED_CONTROLS = """() => [
    ...document.querySelectorAll('input, textarea, select, button, a[href]')]
    .filter(e => e.offsetParent !== null || e.type === 'file')
    .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                 && !e.textContent.trim())
    .map(e => e.outerHTML)"""


async def test_every_page_works_by_keyboard_on_a_phone_with_every_control_labelled(
    stack: Stack, browser: Browser, http: httpx.AsyncClient
) -> None:
    user = await signup(http)
    context = await browser.new_context(
        base_url=stack.cfg.api_url, viewport={"width": 390, "height": 844}, is_mobile=True
    )
    try:
        page = await context.new_page()
        await page.goto("/")  # signed out: the log-in page
        await page.wait_for_url("**/login")
        # By keyboard alone: Tab to the email field, type, Tab, type, Enter.
        for _ in range(10):
            await page.keyboard.press("Tab")
            if await page.evaluate("document.activeElement.id") == "login-email":
                break
        await page.keyboard.type(user.email)
        await page.keyboard.press("Tab")
        await page.keyboard.type(PASSWORD)
        await page.keyboard.press("Enter")
        await expect(page.get_by_role("heading", name="Make a BitBuddy")).to_be_visible()
        for path, heading in (
            ("/", "Make a BitBuddy"),
            ("/gallery", "Your BitBuddies"),
            ("/account", "Your account"),
            ("/signup", "Make a BitBuddy"),  # signed in: back to create
        ):
            await page.goto(path)
            await expect(page.get_by_role("heading", name=heading)).to_be_visible()
            assert await page.evaluate(UNLABELLED_CONTROLS) == [], path
            # Readable on a phone: nothing wider than the screen.
            width = await page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, (path, width)
        await screenshot(page, "create-phone")
        await page.goto("/account")
        await page.get_by_role("button", name="Log out").click()
        await page.wait_for_url("**/login")
        assert await page.evaluate(UNLABELLED_CONTROLS) == []
        # The session ended on the server: its cookie opens nothing now.
        await page.goto("/gallery")
        await page.wait_for_url("**/login")
    finally:
        await context.close()


async def test_the_emailed_links_verify_the_address_and_reset_a_forgotten_password(
    stack: Stack, browser: Browser, mailbox: Mailbox
) -> None:
    async with visit(browser, stack.cfg.api_url) as visitor:
        page = visitor.page
        email = await _sign_up(page)
        # The sign-up's verification mail: its link opens the web app's page.
        link, token = link_of(await mailbox.wait_for(email, "Confirm your email"))
        await page.goto(f"{link}#token={token}")
        await expect(page.locator("#verify-status")).to_have_text(re.compile("^Email verified"))
        await page.goto("/account")
        await expect(page.get_by_text("not verified")).to_be_hidden()

        await page.get_by_role("button", name="Log out").click()
        await page.wait_for_url("**/login")
        await page.get_by_text("Forgot your password?").click()
        await page.get_by_label("Email for the reset link").fill(email)
        await page.get_by_role("button", name="Email me a reset link").click()
        await expect(page.get_by_role("status")).to_contain_text("reset link is on its way")
        link, token = link_of(await mailbox.wait_for(email, "Reset your BitBuddies password"))
        await page.goto(f"{link}#token={token}")
        await page.get_by_label("New password").fill("a brand new passphrase")
        await page.get_by_role("button", name="Set password").click()
        await expect(page.get_by_role("status")).to_contain_text("Password set.")
        await page.get_by_role("link", name="Log in").click()
        await page.get_by_label("Email", exact=True).fill(email)
        await page.get_by_label("Password", exact=True).fill("a brand new passphrase")
        await page.get_by_role("button", name="Log in").click()
        await expect(page.get_by_role("heading", name="Make a BitBuddy")).to_be_visible()


async def test_the_cancel_button_stops_the_generation_and_gives_the_token_back(
    stack: Stack, browser: Browser, models: httpx.AsyncClient
) -> None:
    async with visit(browser, stack.cfg.api_url) as visitor:
        page = visitor.page
        await _generate_held_at_animate(page, models, seconds=30, prompt="a sleepy cat person")
        await page.get_by_role("button", name="Cancel").click()
        await expect(page.locator("#view")).to_have_attribute(
            "data-outcome", "cancelled", timeout=60_000
        )
        await expect(page.locator("#outcome [role=alert]")).to_have_text(
            re.compile(f"^{re.escape(contract.CANCELLED)} {re.escape(contract.REFUNDED)}")
        )
        await expect(page.get_by_role("button", name="Cancel")).to_be_hidden()
        await expect(page.locator("#balance")).to_have_text("Balance: 3 tokens")
        await screenshot(page, "cancelled")


# --- buying tokens ---------------------------------------------------------------------

BUY_TIMEOUT_MS = 30_000


async def _purchases(page: Page) -> list[int]:
    """The signed-in user's ledger purchases (their deltas), newest first."""
    answer = await page.request.get("/v1/billing/ledger")
    assert answer.ok, answer.status
    entries = json.loads(await answer.text())["entries"]
    return [e["delta"] for e in entries if e["kind"] == "purchase"]


async def _choose_pack(page: Page, stripe_url: str) -> str:
    """From a page with the balance: Buy tokens, the 10-token pack, on to the stand-in's
    Checkout page. Returns the Checkout Session's id."""
    buy = page.get_by_role("button", name="Buy tokens")
    await expect(buy).to_have_attribute("aria-expanded", "false")
    await buy.click()
    await expect(buy).to_have_attribute("aria-expanded", "true")
    pack = page.get_by_role("button", name=re.compile(r"^10 tokens for \D*5[.,]00"))
    await expect(pack).to_be_visible()
    assert await page.evaluate(UNLABELLED_CONTROLS) == []
    await pack.click()
    await page.wait_for_url(f"{stripe_url}/pay/*")
    await expect(page.get_by_role("heading", name="Local Stripe checkout")).to_be_visible()
    return page.url.rsplit("/", 1)[1]


async def test_buying_tokens_shows_the_new_balance_without_a_reload_when_the_payment_lands(
    stack: Stack, browser: Browser
) -> None:
    """The buyer is back before Stripe's webhook: the Pay click's request is held by the
    test (the page is sent back as the stand-in would send it) and the stand-in takes the
    payment, and delivers its webhook, only once the account page shows the old balance.
    So the page learns of the credit by polling, not by loading."""
    started = time.monotonic()
    stripe_url = stack.cfg.stripe_url
    async with (
        visit(browser, stack.cfg.api_url) as buyer,
        httpx.AsyncClient(base_url=stripe_url, timeout=30.0) as stand_in,
    ):
        page = buyer.page
        await _sign_up(page)
        await page.goto("/account")
        await expect(page.locator("[data-balance]")).to_have_text("Balance: 3 tokens")
        await expect(page.locator("#balance")).to_have_text("Balance: 3 tokens")
        session_id = await _choose_pack(page, stripe_url)

        held: list[str] = []

        async def hold_payment(route: Route) -> None:
            if route.request.method != "POST":
                await route.continue_()
                return
            held.append(route.request.url)
            session = (await stand_in.get(f"/v1/checkout/sessions/{session_id}")).json()
            back = session["success_url"].replace("{CHECKOUT_SESSION_ID}", session_id)
            await route.fulfill(status=303, headers={"Location": back})

        await page.route(f"{stripe_url}/pay/*", hold_payment)
        await page.get_by_role("button", name="Pay").click()
        await page.wait_for_url(re.compile(r"/account\?purchase=complete&session_id=cs_"))
        status = page.locator("#purchase-status")
        await expect(status).to_have_text("Payment received; your tokens are on their way…")
        await expect(page.locator("#balance")).to_have_text("Balance: 3 tokens")
        assert held and await _purchases(page) == []
        await page.evaluate("window.stillTheSamePage = true")

        # Now Stripe takes the payment and delivers checkout.session.completed.
        paid = await stand_in.post(f"/pay/{session_id}")
        assert paid.status_code == 303, paid.text
        await expect(status).to_have_text(
            "+10 tokens added. Balance: 13 tokens.", timeout=BUY_TIMEOUT_MS
        )
        await expect(page.locator("#balance")).to_have_text("Balance: 13 tokens")
        await expect(page.locator("[data-balance]")).to_have_text("Balance: 13 tokens")
        assert await page.evaluate("window.stillTheSamePage === true")  # no reload
        assert urlsplit(page.url).path == "/account" and not urlsplit(page.url).query
        assert await _purchases(page) == [10]
        await screenshot(page, "bought")
        assert buyer.hosts == {urlsplit(stack.cfg.api_url).netloc, urlsplit(stripe_url).netloc}
    print(f"\nbuy flow: {time.monotonic() - started:.1f} s")


async def test_a_paid_purchase_shows_at_once_and_a_cancelled_one_charges_nothing(
    stack: Stack, browser: Browser
) -> None:
    """From the create page, the real round trip: the webhook may land before the page
    is back (compared with the balance before checkout, it is still "+10"); then a second
    purchase cancelled on the Checkout page adds nothing."""
    stripe_url = stack.cfg.stripe_url
    async with visit(browser, stack.cfg.api_url) as buyer:
        page = buyer.page
        await _sign_up(page)  # on the create page
        await expect(page.locator("[data-balance]")).to_have_text(re.compile("Balance: 3 tokens"))
        await _choose_pack(page, stripe_url)
        await page.get_by_role("button", name="Pay").click()
        # "commit": the page replaces this URL with /account as soon as it has said the
        # outcome, which can be before its load event (a cancelled purchase needs only the
        # balance), so waiting for the load would miss it.
        await page.wait_for_url("**/account?purchase=complete*", wait_until="commit")
        status = page.locator("#purchase-status")
        await expect(status).to_have_text(
            "+10 tokens added. Balance: 13 tokens.", timeout=BUY_TIMEOUT_MS
        )
        await expect(page.locator("#balance")).to_have_text("Balance: 13 tokens")

        # On a phone, by keyboard: Buy tokens, Tab to the first pack, Enter.
        await page.set_viewport_size({"width": 390, "height": 844})
        await page.goto("/account")
        await expect(status).to_be_empty()  # said once, not at every visit
        await page.get_by_role("button", name="Buy tokens").focus()
        await page.keyboard.press("Enter")
        first = page.locator("#pack-list button").first
        await expect(first).to_have_text(re.compile(r"^10 tokens for "))
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390
        assert await page.evaluate(UNLABELLED_CONTROLS) == []
        await screenshot(page, "buy-phone")
        await page.keyboard.press("Tab")
        assert await page.evaluate("document.activeElement.dataset.pack") == "pack-10"
        await page.keyboard.press("Enter")
        await page.wait_for_url(f"{stripe_url}/pay/*")
        await page.get_by_role("link", name="Cancel").click()
        await page.wait_for_url("**/account?purchase=cancelled", wait_until="commit")
        await expect(status).to_have_text("Payment cancelled; nothing was charged.")
        await expect(page.locator("#balance")).to_have_text("Balance: 13 tokens")
        await screenshot(page, "purchase-cancelled")
        assert await _purchases(page) == [10]


PAIRING_CODE = re.compile(r"^[A-HJKMNP-Z2-9]{4}-[A-HJKMNP-Z2-9]{4}$")
EXTENSION_ID = "ighhgfpcngbokfoplnnjnpnnngdebald"  # the default BITBUDDIES_EXTENSION_IDS

# Stands in for chrome.runtime as a page sees it with our extension installed (a page can
# message only an extension that lists it as externally connectable): it answers the
# hello, and keeps the token the pair message hands over.
FAKE_EXTENSION = """
window.chrome = window.chrome || {};
window.chrome.runtime = {
  lastError: undefined,
  sendMessage(id, message, callback) {
    setTimeout(() => {
      if (id !== "EXTENSION_ID") {
        window.chrome.runtime.lastError = { message: "Could not establish connection." };
        callback(undefined);
        window.chrome.runtime.lastError = undefined;
        return;
      }
      if (message.type === "bitbuddies:pair") window.pairedToken = message.token;
      callback({ ok: true });
    }, 10);
  },
};
""".replace("EXTENSION_ID", EXTENSION_ID)


async def test_connect_the_extension_shows_a_code_that_pairs_it_when_it_cannot_be_messaged(
    stack: Stack, browser: Browser, http: httpx.AsyncClient
) -> None:
    """No extension answers this browser's page: "Connect the extension" (by keyboard)
    shows a pairing code, and that code, typed in the extension, makes a working token."""
    async with visit(browser, stack.cfg.api_url) as visitor:
        page = visitor.page
        email = await _sign_up(page)
        await page.goto("/account")
        await expect(page.locator("#devices")).to_contain_text("No devices connected.")
        await page.get_by_role("button", name="Connect the extension").focus()
        await page.keyboard.press("Enter")
        status = page.locator("#connect-status")
        await expect(status).to_contain_text(
            "Type this code in the BitBuddies extension's popup (valid 10 minutes)"
        )
        code = await page.locator("#pairing-code").inner_text()
        assert PAIRING_CODE.match(code), code
        assert await page.evaluate(UNLABELLED_CONTROLS) == []
        await screenshot(page, "account-pairing-code")
    paired = await http.post("/v1/tokens/pair", json={"code": code.lower()})
    assert paired.status_code == 201, paired.text
    me = await http.get("/v1/me", headers={"Authorization": f"Bearer {paired.json()['token']}"})
    assert me.status_code == 200 and me.json()["email"] == email


async def test_connect_the_extension_hands_an_installed_extension_a_device_token(
    stack: Stack, browser: Browser, http: httpx.AsyncClient
) -> None:
    async with visit(browser, stack.cfg.api_url) as visitor:
        page = visitor.page
        await visitor.context.add_init_script(FAKE_EXTENSION)
        email = await _sign_up(page)
        await page.goto("/account")
        await expect(page.locator("#devices")).to_contain_text("No devices connected.")
        await page.get_by_role("button", name="Connect the extension").click()
        await expect(page.locator("#connect-status")).to_have_text(
            "Connected: your BitBuddy will walk on the pages you visit."
        )
        await expect(page.locator("#devices")).to_contain_text("Chrome extension")
        await expect(page.locator("#pairing-code")).to_have_count(0)  # no code was needed
        token = await page.evaluate("window.pairedToken")
    me = await http.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.json()["email"] == email
