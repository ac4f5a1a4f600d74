"""What the Chrome extension costs a heavy page: long tasks, main-thread time, JS heap.

``python -m bench.extension_cost`` opens the same heavy local page (thousands of DOM
nodes, a table, timers that work every 50 ms and a 60 ms task every second) in Debian's
Chromium three ways, in the same run, interleaved round by round:

- bare: no extension at all (the baseline);
- unpaired: the extension loaded, not paired (the content script asks once and leaves);
- buddy: the extension paired, its buddy walking along the bottom (requestAnimationFrame).

Over a window of ``--seconds`` it sums the page's long tasks (PerformanceObserver
'longtask'), counts the page's own animation frames, and reads Chromium's counters
(CDP Performance.getMetrics: script, task, layout and style time in the window; JS heap
and nodes at its end). The heap is the page's isolate, content scripts' isolated world
included. The buddy's API here is a stub on the same local server (a character list and a
256 px animated transparent WebP, the size the test stack makes), so no stack is started:
the figure is the extension's cost on the page, not the service's.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from playwright.async_api import BrowserContext, Playwright, async_playwright

from tests.support.extension import (
    EXTENSION_ID,
    TAG,
    chromium_with_extension,
    serve_pages,
    service_worker,
)

CHARACTER_ID = "00000000-0000-4000-8000-000000000001"
SETTLE_SECONDS = 1.5  # after load: document_idle, the buddy's first frames
VARIANTS = ("bare", "unpaired", "buddy")
METRICS = {  # CDP name -> (label, kind): "delta" over the window or "end" value
    "TaskDuration": ("main-thread task time, ms", "delta"),
    "ScriptDuration": ("script time, ms", "delta"),
    "LayoutDuration": ("layout time, ms", "delta"),
    "RecalcStyleDuration": ("style recalc time, ms", "delta"),
    "JSHeapUsedSize": ("JS heap used, MB", "end"),
    "Nodes": ("DOM nodes", "end"),
}

HEAVY_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>A heavy page</title>
<style>
body { font: 14px sans-serif; margin: 0 12px; }
.grid { display: grid; grid-template-columns: repeat(20, 1fr); gap: 2px; }
.cell { padding: 2px; border: 1px solid #ddd; border-radius: 3px; }
.cell:nth-child(7n) { background: #eef; }
td { border-bottom: 1px solid #eee; padding: 1px 4px; }
</style></head><body>
<h1>A heavy page</h1><p id="ticks">0</p>
<div class="grid" id="grid"></div>
<table id="table"><tbody></tbody></table>
<script>
const grid = document.getElementById('grid');
for (let i = 0; i < 4000; i++) {
  const cell = document.createElement('div');
  cell.className = 'cell';
  cell.innerHTML = '<span>item ' + i + '</span> <b>' + (i * 7919 % 1000) + '</b>';
  grid.append(cell);
}
const body = document.querySelector('#table tbody');
for (let r = 0; r < 600; r++) {
  const row = body.insertRow();
  for (let c = 0; c < 6; c++) row.insertCell().textContent = 'r' + r + 'c' + c;
}
// a page that keeps busy: small work every 50 ms, a 60 ms task every second
let ticks = 0;
setInterval(() => {
  ticks++;
  document.getElementById('ticks').textContent = ticks;
  grid.children[ticks % 4000].classList.toggle('hot');
  const end = performance.now() + 2; while (performance.now() < end) {}
}, 50);
setInterval(() => { const end = performance.now() + 60; while (performance.now() < end) {} }, 1000);
</script></body></html>"""

START_WINDOW = """() => {
  window.__bench = { longTasks: 0, longTaskMs: 0, frames: 0, stop: false };
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      window.__bench.longTasks += 1; window.__bench.longTaskMs += entry.duration;
    }
  }).observe({ type: 'longtask' });
  const frame = () => {
    if (!window.__bench.stop) { window.__bench.frames++; requestAnimationFrame(frame); }
  };
  requestAnimationFrame(frame);
}"""
END_WINDOW = "() => { window.__bench.stop = true; return window.__bench; }"


def animated_webp(size: int = 256, frames: int = 24) -> bytes:
    """A transparent animated WebP like a character's: a figure that bobs."""
    images = []
    for n in range(frames):
        image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        draw = ImageDraw.Draw(image)
        lift = int(12 * abs((n % 12) - 6) / 6)
        draw.ellipse((70, 40 - lift, 186, 156 - lift), fill=(240, 170, 60, 255))
        draw.rectangle((100, 150 - lift, 156, 236 - lift), fill=(60, 90, 200, 255))
        images.append(image)
    out = io.BytesIO()
    images[0].save(out, "WEBP", save_all=True, append_images=images[1:], duration=83, loop=0)
    return out.getvalue()


def routes(webp: bytes) -> dict[str, Callable[[], tuple[str | bytes, dict[str, str]]]]:
    listing: dict[str, Any] = {
        "characters": [
            {"id": CHARACTER_ID, "prompt": "a bench buddy", "created_at": None, "assets": {}}
        ]
    }
    return {
        "/heavy": lambda: (HEAVY_PAGE, {}),
        "/pair": lambda: ("<!doctype html><title>pair</title>", {}),
        "/v1/characters": lambda: (json.dumps(listing), {"Content-Type": "application/json"}),
        f"/v1/characters/{CHARACTER_ID}/assets/webp": lambda: (
            webp,
            {"Content-Type": "image/webp"},
        ),
    }


async def pair(context: BrowserContext, base_url: str) -> None:
    await service_worker(context)
    page = await context.new_page()
    await page.goto(base_url + "/pair")
    message = {"type": "bitbuddies:pair", "token": "bench-token", "name": "bench"}
    answer = await page.evaluate(
        "([id, message]) => chrome.runtime.sendMessage(id, message)", [EXTENSION_ID, message]
    )
    if answer != {"ok": True}:
        raise RuntimeError(f"pairing failed: {answer}")
    await page.close()


async def measure(
    context: BrowserContext, url: str, seconds: float, buddy: bool
) -> dict[str, float]:
    page = await context.new_page()
    cdp = await context.new_cdp_session(page)
    await cdp.send("Performance.enable")
    await page.goto(url, wait_until="load")
    if buddy:
        await page.wait_for_selector(TAG, state="attached", timeout=10_000)
    await asyncio.sleep(SETTLE_SECONDS)
    if not buddy and await page.locator(TAG).count():
        raise RuntimeError("a buddy showed where none should")
    before = {m["name"]: m["value"] for m in (await cdp.send("Performance.getMetrics"))["metrics"]}
    await page.evaluate(START_WINDOW)
    await asyncio.sleep(seconds)
    window: dict[str, Any] = await page.evaluate(END_WINDOW)
    after = {m["name"]: m["value"] for m in (await cdp.send("Performance.getMetrics"))["metrics"]}
    figures = {
        "long tasks": float(window["longTasks"]),
        "long-task time, ms": float(window["longTaskMs"]),
        "page frames/s": window["frames"] / seconds,
    }
    for name, (label, kind) in METRICS.items():
        value = after[name] - before[name] if kind == "delta" else after[name]
        if name.endswith("Duration"):
            value *= 1000
        elif name == "JSHeapUsedSize":
            value /= 1e6
        figures[label] = value
    await page.close()
    return figures


async def run_variant(
    playwright: Playwright, variant: str, base_url: str, seconds: float
) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bitbuddies-bench-ext-") as profile:
        async with chromium_with_extension(
            playwright, Path(profile), extension=variant != "bare"
        ) as context:
            if variant == "buddy":
                await pair(context, base_url)
            elif variant == "unpaired":
                await service_worker(context)
            return await measure(context, base_url + "/heavy", seconds, variant == "buddy")


async def run(rounds: int, seconds: float) -> None:
    results: dict[str, list[dict[str, float]]] = {variant: [] for variant in VARIANTS}
    with serve_pages(routes(animated_webp())) as pages:
        async with async_playwright() as playwright:
            for number in range(1, rounds + 1):
                for variant in VARIANTS:  # interleaved, so drift hits all three alike
                    results[variant].append(
                        await run_variant(playwright, variant, pages.base_url, seconds)
                    )
                print(f"round {number}/{rounds} done", flush=True)
    medians = {
        variant: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        for variant, runs in results.items()
    }
    print(f"\nheavy page, {seconds:g} s window, median of {rounds} rounds\n")
    print(f"{'':28}{'bare':>10}{'unpaired':>20}{'buddy':>20}")
    for key, bare in medians["bare"].items():
        cells = [f"{bare:10.1f}"]
        for variant in VARIANTS[1:]:
            value = medians[variant][key]
            ratio = f"(x{value / bare:.2f})" if bare else "(-)"
            cells.append(f"{value:11.1f} {ratio:>8}")
        print(f"{key:28}{''.join(cells)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="the measured window")
    args = parser.parse_args()
    asyncio.run(run(args.rounds, args.seconds))


if __name__ == "__main__":
    main()
