// The buddy on a page. Injected at document_idle into top frames only. It reads nothing of
// the page: it adds one element (<bitbuddies-buddy>, a closed shadow root, one <img>) to
// the document element and moves it along the bottom of the viewport. The picture comes
// from the service worker as a data: URL, which an <img> shows even under a page's
// `default-src 'none'` (content scripts run in an isolated world).
(() => {
  "use strict";

  const TAG = "bitbuddies-buddy";
  const SIZE = 96; // px, the buddy's box
  const SPEED = 70; // px per second
  const IDLE_EVERY_MS = [5000, 11000]; // a pause now and then...
  const IDLE_FOR_MS = [1200, 2600]; // ...this long
  const DROP_PAUSE_MS = 2500; // where it was dropped, before it falls back and walks on
  const DRAG_THRESHOLD = 4; // px a pointer moves before a press is a drag, not a click
  const GRAVITY = 2400; // px/s² when it falls back to the bottom

  const root = document.documentElement;
  if (!root || window.top !== window) return;
  // A second injection into this isolated world, or one after an extension reload: the
  // flag or the element of the first says there is a buddy already.
  if (globalThis.__bitbuddiesInjected) return;
  globalThis.__bitbuddiesInjected = true;
  const existing = () => Array.prototype.some.call(root.children, (el) => el.localName === TAG);
  if (existing()) return;

  const site = location.hostname;
  const reducedMotion = matchMedia("(prefers-reduced-motion: reduce)");

  let buddy = null; // {host, img, id}
  let visible = false;
  let wanted = false; // what the settings and the service worker say

  // ---- the element ----------------------------------------------------------------------

  const CSS = `
    img {
      display: block; width: 100%; height: 100%; object-fit: contain;
      pointer-events: auto; cursor: grab; touch-action: none;
      user-select: none; -webkit-user-select: none; -webkit-user-drag: none;
      transform-origin: 50% 100%; transform: scaleX(var(--dir, 1));
    }
    img.dragging { cursor: grabbing; }
    img.hop { animation: hop 480ms cubic-bezier(.3,.7,.4,1); }
    @keyframes hop {
      0% { transform: translateY(0) scaleX(var(--dir, 1)) scaleY(1); }
      15% { transform: translateY(0) scaleX(var(--dir, 1)) scaleY(.85); }
      50% { transform: translateY(-42px) scaleX(var(--dir, 1)) scaleY(1.05); }
      100% { transform: translateY(0) scaleX(var(--dir, 1)) scaleY(1); }
    }
  `;

  function build(src, id) {
    if (existing()) return null;
    const host = document.createElement(TAG);
    const style = {
      all: "initial",
      position: "fixed",
      left: "0px",
      top: "0px",
      width: `${SIZE}px`,
      height: `${SIZE}px`,
      margin: "0px",
      padding: "0px",
      border: "0px",
      display: "block",
      "z-index": "2147483647",
      "pointer-events": "none",
      contain: "layout style size",
      "will-change": "transform",
    };
    for (const [name, value] of Object.entries(style)) host.style.setProperty(name, value, "important");
    const shadow = host.attachShadow({ mode: "closed" });
    const sheet = new CSSStyleSheet();
    sheet.replaceSync(CSS);
    shadow.adoptedStyleSheets = [sheet];
    const img = document.createElement("img");
    img.alt = "";
    img.draggable = false;
    img.src = src;
    shadow.append(img);
    listen(img);
    root.append(host);
    return { host, img, id };
  }

  // ---- motion -----------------------------------------------------------------------------

  let vw = 0;
  let vh = 0;
  function measure() {
    const standards = document.compatMode === "CSS1Compat";
    vw = standards ? root.clientWidth : innerWidth;
    vh = standards ? root.clientHeight : innerHeight;
  }
  const maxX = () => Math.max(0, vw - SIZE);
  const floorY = () => Math.max(0, vh - SIZE);
  const rand = ([a, b]) => a + Math.random() * (b - a);

  let x = 0;
  let y = 0;
  let dir = 1;
  let mode = "walk"; // walk | idle | drag | dropped | fall | still
  let until = 0; // when idle or dropped ends
  let nextIdle = 0;
  let vy = 0;
  let frame = 0;
  let last = 0;

  let placed = "";
  let faced = 0;
  function place() {
    // Touch styles only when a whole pixel or the direction changed: no style work for
    // the page on frames where nothing moved.
    if (!buddy) return;
    const transform = `translate3d(${Math.round(x)}px, ${Math.round(y)}px, 0)`;
    if (transform !== placed) {
      buddy.host.style.setProperty("transform", transform, "important");
      placed = transform;
    }
    if (dir !== faced) {
      buddy.img.style.setProperty("--dir", String(dir));
      faced = dir;
    }
  }

  function settle() {
    // Where it sits when it does not walk: the bottom corner.
    measure();
    x = Math.min(x, maxX());
    y = mode === "walk" || mode === "idle" ? floorY() : Math.min(y, floorY());
    if (reducedMotion.matches && mode !== "drag" && mode !== "dropped") {
      mode = "still";
      x = maxX();
      dir = -1;
    }
    place();
  }

  function tick(now) {
    frame = 0;
    const dt = last ? Math.min(now - last, 100) / 1000 : 0;
    last = now;
    switch (mode) {
      case "walk":
        x += dir * SPEED * dt;
        if (x <= 0) [x, dir] = [0, 1];
        if (x >= maxX()) [x, dir] = [maxX(), -1];
        y = floorY();
        if (now >= nextIdle) [mode, until] = ["idle", now + rand(IDLE_FOR_MS)];
        break;
      case "idle":
        y = floorY();
        if (now >= until) {
          mode = "walk";
          nextIdle = now + rand(IDLE_EVERY_MS);
          if (Math.random() < 0.3) dir = -dir;
        }
        break;
      case "dropped":
        if (now >= until) [mode, vy] = ["fall", 0];
        break;
      case "fall":
        vy += GRAVITY * dt;
        y += vy * dt;
        if (y >= floorY()) [y, mode, nextIdle] = [floorY(), "walk", now + rand(IDLE_EVERY_MS)];
        break;
      default: // drag, still: the pointer or nothing moves it
        break;
    }
    place();
    run();
  }

  function run() {
    if (frame || !visible || document.hidden || mode === "still") return;
    frame = requestAnimationFrame(tick);
  }

  function stop() {
    if (frame) cancelAnimationFrame(frame);
    frame = 0;
    last = 0;
  }

  // ---- pointer: a click hops, a drag carries it -------------------------------------------

  function listen(img) {
    let press = null;
    const swallow = (event) => event.stopPropagation();
    img.addEventListener("click", swallow);
    img.addEventListener("contextmenu", swallow);
    img.addEventListener("pointerdown", (event) => {
      if (event.button !== 0) return;
      event.preventDefault();
      event.stopPropagation();
      img.setPointerCapture(event.pointerId);
      press = { id: event.pointerId, sx: event.clientX, sy: event.clientY, dx: event.clientX - x, dy: event.clientY - y, moved: false };
    });
    img.addEventListener("pointermove", (event) => {
      if (!press || event.pointerId !== press.id) return;
      event.stopPropagation();
      if (!press.moved && Math.hypot(event.clientX - press.sx, event.clientY - press.sy) < DRAG_THRESHOLD) return;
      if (!press.moved) {
        press.moved = true;
        mode = "drag";
        img.classList.add("dragging");
      }
      x = Math.min(Math.max(event.clientX - press.dx, 0), maxX());
      y = Math.min(Math.max(event.clientY - press.dy, 0), floorY());
      place();
    });
    const release = (event) => {
      if (!press || event.pointerId !== press.id) return;
      event.stopPropagation();
      const dragged = press.moved;
      press = null;
      img.classList.remove("dragging");
      if (dragged) {
        // It stays where it was dropped: a moment, or for good when motion is reduced.
        [mode, until] = [reducedMotion.matches ? "still" : "dropped", performance.now() + DROP_PAUSE_MS];
        run();
      } else if (!reducedMotion.matches) {
        img.classList.remove("hop");
        void img.offsetWidth; // restart the animation (our own element, in our shadow)
        img.classList.add("hop");
      }
    };
    img.addEventListener("pointerup", release);
    img.addEventListener("pointercancel", release);
    img.addEventListener("animationend", () => img.classList.remove("hop"));
  }

  // ---- showing and hiding -----------------------------------------------------------------

  function update() {
    const show = wanted && !document.fullscreenElement;
    if (show === visible) return;
    visible = show;
    if (buddy) buddy.host.style.setProperty("display", show ? "block" : "none", "important");
    if (show) {
      settle();
      run();
    } else {
      stop();
    }
  }

  let asking = 0;
  async function refresh() {
    const ask = ++asking;
    let answer;
    try {
      answer = await chrome.runtime.sendMessage({ type: "buddy:get", site });
    } catch {
      return; // the extension was reloaded or removed: this page keeps what it has
    }
    if (ask !== asking) return; // a newer question is on its way
    if (!answer?.show || !answer.src) {
      wanted = false;
      update();
      return;
    }
    if (!buddy) {
      buddy = build(answer.src, answer.id);
      if (!buddy) return;
      measure();
      x = Math.random() * maxX();
      y = floorY();
      dir = Math.random() < 0.5 ? 1 : -1;
      nextIdle = performance.now() + rand(IDLE_EVERY_MS);
      place();
    } else if (buddy.id !== answer.id) {
      buddy.img.src = answer.src;
      buddy.id = answer.id;
    }
    wanted = true;
    update();
  }

  addEventListener("resize", () => buddy && settle(), { passive: true });
  document.addEventListener("visibilitychange", () => (document.hidden ? stop() : run()));
  document.addEventListener("fullscreenchange", update);
  reducedMotion.addEventListener("change", () => {
    if (!reducedMotion.matches && mode === "still") mode = "walk";
    settle();
    run();
  });
  chrome.storage.onChanged.addListener((changes, area) => {
    if (area === "sync" && changes.settings) refresh();
  });

  refresh();
})();
