// The BitBuddies web app: plain JavaScript on the public HTTP contract (/openapi.json),
// no build step. Every page is the same shell (app.html); the path picks the view. The
// browser session is an HttpOnly cookie; the CSRF token it needs for every
// state-changing request comes from GET /v1/auth/session and lives only in memory.

const $ = (sel, root = document) => root.querySelector(sel);
const view = $("#view");
const session = { csrf: null, user: null, balance: null, owed: 0 };

// --- HTTP ---------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, { json, form, headers = {} } = {}) {
  const init = { method, headers: { ...headers }, credentials: "same-origin" };
  if (method !== "GET" && session.csrf) init.headers["X-CSRF-Token"] = session.csrf;
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, "offline", "Can't reach BitBuddies; check your connection and try again.");
  }
  if (response.status === 204) return null;
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const error = body && body.error ? body.error : {};
    throw new ApiError(response.status, error.code || "error", error.message || response.statusText);
  }
  return body;
}

// --- small helpers ------------------------------------------------------------

function show(templateId, title) {
  view.replaceChildren($(`#${templateId}`).content.cloneNode(true));
  document.title = title ? `${title} · BitBuddies` : "BitBuddies";
  view.focus({ preventScroll: true });
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    if (name === "text") node.textContent = value;
    else if (value === true) node.setAttribute(name, "");
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

function fail(form, error) {
  const slot = $("[data-error]", form);
  slot.textContent = error.message;
}

function busy(form, on) {
  for (const button of form.querySelectorAll("button")) button.disabled = on;
}

function tokens(n) {
  return n === 1 ? "1 token" : `${n} tokens`;
}

async function refreshBalance(tries = 3) {
  let me;
  try {
    me = await api("GET", "/v1/me");
  } catch (error) {
    if (tries <= 1 || error.status === 401) throw error;
    await new Promise((resolve) => setTimeout(resolve, 1000));
    return refreshBalance(tries - 1);
  }
  session.balance = me.balance;
  session.owed = me.owed || 0;
  // Owed: a payment refunded or disputed after its tokens were spent; a purchase settles it.
  const text = `Balance: ${tokens(me.balance)}` + (session.owed > 0 ? ` · you owe ${tokens(session.owed)}` : "");
  $("#balance").textContent = text;
  for (const slot of document.querySelectorAll("[data-balance]")) slot.textContent = text;
  return me;
}

function video(src, poster, label) {
  // Muted, so it may autoplay; VP9 with alpha: transparent over the checkered stage.
  const node = el("video", { poster, autoplay: true, loop: true, muted: true, playsinline: true, "aria-label": label });
  node.muted = true; // the attribute alone does not mute an element made by script
  node.src = src;
  return node;
}

function downloads(id) {
  const base = `/v1/characters/${id}/assets`;
  return el(
    "p",
    { class: "downloads" },
    "Download: ",
    el("a", { href: `${base}/webm?download=true`, download: "", text: "WebM" }),
    " · ",
    el("a", { href: `${base}/webp?download=true`, download: "", text: "animated WebP" }),
    " · ",
    el("a", { href: `${base}/png?download=true`, download: "", text: "PNG" }),
  );
}

// --- buying tokens ------------------------------------------------------------
// "Buy tokens" lists the packs; choosing one opens a Stripe Checkout Session and sends
// the browser there. Stripe sends the buyer back to /account?purchase=complete (or
// =cancelled); the tokens come with Stripe's webhook, so that page polls the balance.

const PURCHASE = "bitbuddies.purchase"; // sessionStorage: the balance before checkout
const POLL_EVERY_MS = 1000;
const POLL_FOR_MS = 120_000;

function money(minor, currency) {
  const format = new Intl.NumberFormat(undefined, { style: "currency", currency: currency.toUpperCase() });
  return format.format(minor / 10 ** format.resolvedOptions().maximumFractionDigits);
}

function packButton(pack, panel) {
  const price = money(pack.price, pack.currency);
  const text = pack.name === tokens(pack.tokens) ? `${pack.name} for ${price}` : `${pack.name}: ${tokens(pack.tokens)} for ${price}`;
  const button = el("button", { type: "button", "data-pack": pack.id, text });
  // One key per pack on this page: a double click or a retry opens one Checkout Session.
  const key = crypto.randomUUID();
  button.addEventListener("click", async () => {
    busy(panel, true);
    $("[data-error]", panel).textContent = "";
    try {
      const { url } = await api("POST", "/v1/billing/checkout", { json: { pack: pack.id }, headers: { "Idempotency-Key": key } });
      sessionStorage.setItem(PURCHASE, JSON.stringify({ balance: session.balance - session.owed, tokens: pack.tokens }));
      location.assign(url);
    } catch (error) {
      fail(panel, error);
      busy(panel, false);
    }
  });
  return el("li", {}, button);
}

function buyTokens(slot) {
  slot.replaceChildren($("#t-buy").content.cloneNode(true));
  const toggle = $("#buy", slot);
  const panel = $("#packs", slot);
  const list = $("#pack-list", slot);
  let listed = false;
  toggle.addEventListener("click", async () => {
    const open = toggle.getAttribute("aria-expanded") !== "true";
    toggle.setAttribute("aria-expanded", String(open));
    panel.hidden = !open;
    if (!open || listed) return;
    listed = true;
    try {
      const { packs } = await api("GET", "/v1/billing/packs");
      list.replaceChildren(...packs.map((pack) => packButton(pack, panel)));
    } catch (error) {
      listed = false;
      fail(panel, error);
    }
  });
  // Back from the checkout page (a page restored from the back/forward cache): choosable again.
  window.addEventListener("pageshow", (event) => event.persisted && busy(panel, false));
}

function purchaseReturn(me) {
  const outcome = new URLSearchParams(location.search).get("purchase");
  if (outcome !== "complete" && outcome !== "cancelled") return;
  const status = $("#purchase-status");
  let before = null;
  try {
    before = JSON.parse(sessionStorage.getItem(PURCHASE) || "null");
  } catch {
    before = null;
  }
  const finish = (text) => {
    status.textContent = text;
    sessionStorage.removeItem(PURCHASE);
    history.replaceState(null, "", "/account"); // a reload does not say it again
  };
  if (outcome === "cancelled") return finish("Payment cancelled; nothing was charged.");
  // Compared with the balance before leaving for checkout, as the credit may have landed
  // before this page loaded; without it (another tab), with the balance shown now. The
  // balance less what is owed: a credit that first settles a debt moves that by all it adds.
  const net = (me) => me.balance - (me.owed || 0);
  const baseline = before && Number.isInteger(before.balance) ? before.balance : net(me);
  const bought = before && Number.isInteger(before.tokens) ? before.tokens : 1;
  const landed = (me) => {
    if (net(me) - baseline < bought) return false;
    finish(`+${tokens(before ? bought : net(me) - baseline)} added. Balance: ${tokens(me.balance)}.`);
    return true;
  };
  status.textContent = "Payment received; your tokens are on their way…";
  if (landed(me)) return;
  const until = Date.now() + POLL_FOR_MS;
  const poll = async () => {
    const now = await refreshBalance(1).catch(() => null);
    if (now && landed(now)) return;
    if (Date.now() >= until) {
      return finish("Your payment is still being confirmed; the tokens will be added to your balance as soon as it is. There is no need to pay again.");
    }
    setTimeout(poll, POLL_EVERY_MS);
  };
  setTimeout(poll, POLL_EVERY_MS);
}

// --- connecting the Chrome extension ------------------------------------------
// The page asks each extension id the API lists (GET /v1/extension) whether it is
// installed; the first that answers gets a new device token by message. Pages can only
// message an extension that lists them as externally connectable; where none answers
// (not installed, another browser), the page shows a pairing code to type in the
// extension's popup instead, which the extension redeems itself (POST /v1/tokens/pair).

const EXTENSION_NAME = "Chrome extension"; // the device token's name, in the devices list
const HELLO_WAIT_MS = 2000; // an installed extension answers at once
const PAIR_WAIT_MS = 10_000; // it stores the token first

function messageExtension(id, message, waitMs) {
  // The extension's answer, or null when none came (chrome.runtime.lastError: no
  // extension of this id, or it did not answer).
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(null), waitMs);
    const answered = (answer) => {
      clearTimeout(timer);
      resolve(answer ?? null);
    };
    try {
      window.chrome.runtime.sendMessage(id, message, (answer) => answered(window.chrome.runtime.lastError ? null : answer));
    } catch {
      answered(null);
    }
  });
}

async function installedExtension() {
  const { extension_ids: ids } = await api("GET", "/v1/extension");
  if (typeof window.chrome?.runtime?.sendMessage !== "function") return null;
  for (const id of ids) {
    const answer = await messageExtension(id, { type: "bitbuddies:hello" }, HELLO_WAIT_MS);
    if (answer?.ok === true) return id;
  }
  return null;
}

async function pairByMessage(id) {
  const made = await api("POST", "/v1/tokens", { json: { name: EXTENSION_NAME } });
  const answer = await messageExtension(id, { type: "bitbuddies:pair", token: made.token, name: EXTENSION_NAME }, PAIR_WAIT_MS);
  if (answer?.ok === true) return true;
  // Not taken: leave no token behind that nothing holds.
  await api("DELETE", `/v1/tokens/${made.id}`).catch(() => {});
  return false;
}

function connectExtension(listDevices) {
  const button = $("#connect-extension");
  const status = $("#connect-status");
  button.addEventListener("click", async () => {
    button.disabled = true;
    status.replaceChildren(el("p", { text: "Looking for the extension…" }));
    try {
      const id = await installedExtension();
      if (id && (await pairByMessage(id))) {
        status.replaceChildren(el("p", { class: "note", text: "Connected: your BitBuddy will walk on the pages you visit." }));
        await listDevices();
        return;
      }
      const { code } = await api("POST", "/v1/tokens/pairing-codes");
      status.replaceChildren(
        el("p", { class: "pairing-code", id: "pairing-code", text: code }),
        el("p", { text: "Type this code in the BitBuddies extension's popup (valid 10 minutes)" }),
      );
    } catch (error) {
      status.replaceChildren(el("p", { class: "error", text: error.message }));
    } finally {
      button.disabled = false;
    }
  });
}

// --- views --------------------------------------------------------------------

function loginView() {
  show("t-login", "Log in");
  const form = $("#login-form");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    busy(form, true);
    try {
      await openSession(form.email.value, form.password.value);
      location.assign("/");
    } catch (error) {
      fail(form, error);
      busy(form, false);
    }
  });
  const forgot = $("#forgot-form");
  forgot.addEventListener("submit", async (event) => {
    event.preventDefault();
    busy(forgot, true);
    const status = $("[data-status]", forgot);
    try {
      await api("POST", "/v1/auth/password-reset", { json: { email: forgot.email.value } });
      status.textContent = "If that address has an account, a reset link is on its way.";
    } catch (error) {
      status.textContent = error.message;
    } finally {
      busy(forgot, false);
    }
  });
}

async function openSession(email, password) {
  const opened = await api("POST", "/v1/auth/session", { json: { email, password } });
  session.csrf = opened.csrf_token;
  session.user = opened.user;
}

function signupView() {
  show("t-signup", "Sign up");
  const form = $("#signup-form");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    busy(form, true);
    try {
      const email = form.email.value;
      const password = form.password.value;
      const made = await api("POST", "/v1/auth/signup", { json: { email, password } });
      await openSession(email, password);
      // The page signs in with the cookie: the API token sign-up also gave ends now.
      await api("DELETE", "/v1/auth/session", { headers: { Authorization: `Bearer ${made.token}` } }).catch(() => {});
      location.assign("/");
    } catch (error) {
      fail(form, error);
      busy(form, false);
    }
  });
}

function createView() {
  show("t-create", "Create");
  buyTokens($("[data-buy]"));
  const form = $("#create-form");
  const input = $("#photo");
  const preview = $("#preview");
  const drop = $("#drop");
  let previewUrl = null;
  const showPreview = () => {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    const file = input.files[0];
    preview.hidden = !file;
    if (file) preview.src = previewUrl = URL.createObjectURL(file);
  };
  input.addEventListener("change", showPreview);
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files.length) {
      input.files = event.dataTransfer.files;
      showPreview();
    }
  });
  // One key per form filled in: a double click or a retried request charges once.
  let key = crypto.randomUUID();
  form.addEventListener("input", () => (key = crypto.randomUUID()));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    busy(form, true);
    const body = new FormData();
    body.append("photo", input.files[0]);
    body.append("prompt", form.prompt.value);
    try {
      const created = await api("POST", "/v1/generations", { form: body, headers: { "Idempotency-Key": key } });
      location.assign(`/generations/${created.id}`);
    } catch (error) {
      fail(form, error);
      busy(form, false);
    }
  });
}

function progressView(id) {
  show("t-progress", "Making your BitBuddy");
  const bar = $("#progress-bar");
  const status = $("#status");
  const steps = $("#steps");
  const pictures = $("#pictures");
  const outcome = $("#outcome");
  const cancel = $("#cancel");
  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      await api("POST", `/v1/generations/${id}/cancel`);
      status.textContent = "Cancelling…";
    } catch (error) {
      if (error.status !== 409) cancel.disabled = false; // 409: it has ended already
      status.textContent = error.message;
    }
  });
  let lastId = 0;
  let source = null;
  let current = null;

  const setProgress = (percent) => {
    bar.value = percent;
    bar.textContent = `${percent}%`;
  };

  const onEvent = (event) => {
    const eventId = Number(event.lastEventId);
    if (eventId && eventId <= lastId) return; // already shown (a replay after a reconnect)
    if (eventId) lastId = eventId;
    const data = JSON.parse(event.data);
    view.dataset.lastEventId = String(lastId);
    const item = el("li", { "data-event-id": String(eventId), "data-step": data.step, text: data.message });
    if (event.type === "progress") {
      if (data.picture) {
        pictures.append(
          el(
            "figure",
            { "data-picture": data.picture },
            el("img", { src: `/v1/generations/${id}/pictures/${data.picture}`, alt: data.message }),
            el("figcaption", { text: data.message }),
          ),
        );
        item.classList.add("picture");
      }
      if (current) current.classList.remove("current");
      item.classList.add("current");
      current = item;
      steps.append(item);
      setProgress(data.percent);
      status.textContent = data.message;
      return;
    }
    // A terminal event: the stream is over; stop the browser from reconnecting.
    source.close();
    cancel.hidden = true;
    if (current) current.classList.remove("current");
    steps.append(item);
    view.dataset.outcome = event.type;
    if (event.type === "completed") {
      setProgress(100);
      status.textContent = data.message;
      outcome.replaceChildren(
        el(
          "div",
          { class: "card stack" },
          el("div", { class: "stage" }, video(`/v1/characters/${data.character_id}/assets/webm`, `/v1/characters/${data.character_id}/assets/png`, "Your BitBuddy")),
          el("p", {}, el("a", { href: `/characters/${data.character_id}`, text: "Open your BitBuddy" }), " · ", el("a", { href: "/gallery", text: "Gallery" })),
        ),
      );
    } else if (event.type === "cancelled") {
      status.textContent = data.message;
      outcome.replaceChildren(
        el("div", { class: "card stack", role: "alert" }, el("p", { text: data.message }), el("p", {}, el("a", { href: "/", text: "Make another" }))),
      );
    } else {
      status.textContent = "This BitBuddy could not be made.";
      outcome.replaceChildren(
        el("div", { class: "card stack failure", role: "alert" }, el("p", { text: data.message }), el("p", {}, el("a", { href: "/", text: "Try another photo" }))),
      );
    }
    refreshBalance().catch(() => {});
  };

  const connect = () => {
    // The browser resumes by itself with Last-Event-ID after a dropped stream; when it
    // gives up (an error answer), we reconnect with ?after= and the same rule holds.
    source = new EventSource(`/v1/generations/${id}/events${lastId ? `?after=${lastId}` : ""}`);
    for (const type of ["progress", "completed", "failed", "cancelled"]) source.addEventListener(type, onEvent);
    source.addEventListener("open", () => (view.dataset.connected = "true"));
    source.addEventListener("error", () => {
      view.dataset.connected = "false";
      view.dataset.drops = String(Number(view.dataset.drops || 0) + 1);
      if (source.readyState === EventSource.CLOSED && view.dataset.outcome === undefined) {
        status.textContent = "Reconnecting…";
        setTimeout(connect, 2000);
      }
    });
  };
  connect();
}

async function galleryView() {
  show("t-gallery", "Gallery");
  const { characters } = await api("GET", "/v1/characters");
  const list = $("#gallery");
  $("[data-empty]").hidden = characters.length > 0;
  for (const character of characters) {
    const base = `/v1/characters/${character.id}/assets`;
    list.append(
      el(
        "li",
        { class: "card", "data-character": character.id },
        el("a", { href: `/characters/${character.id}`, class: "stage", "aria-label": `Open “${character.prompt}”` }, video(`${base}/webm`, `${base}/png`, character.prompt)),
        el("p", { class: "prompt", text: character.prompt }),
        downloads(character.id),
      ),
    );
  }
}

async function characterView(id) {
  show("t-character", "Your BitBuddy");
  const box = $("#character");
  let character;
  try {
    character = await api("GET", `/v1/characters/${id}`);
  } catch (error) {
    box.replaceChildren(el("p", { role: "alert", text: error.status === 404 ? "No such BitBuddy." : error.message }));
    return;
  }
  const base = `/v1/characters/${id}/assets`;
  const toggle = el("input", { type: "checkbox", id: "share", checked: character.shared });
  const link = el("p", { class: "share-url" });
  const showLink = (url) => {
    link.replaceChildren(...(url ? ["Anyone with this link sees it: ", el("a", { href: url, text: url })] : []));
  };
  showLink(character.share_url);
  toggle.addEventListener("change", async () => {
    toggle.disabled = true;
    try {
      const state = await api("PUT", `/v1/characters/${id}/share`, { json: { shared: toggle.checked } });
      toggle.checked = state.shared;
      showLink(state.share_url);
    } catch (error) {
      toggle.checked = !toggle.checked;
      link.textContent = error.message;
    } finally {
      toggle.disabled = false;
    }
  });
  box.replaceChildren(
    el("div", { class: "stage large" }, video(`${base}/webm`, `${base}/png`, character.prompt)),
    el("p", { class: "prompt", text: character.prompt }),
    el("p", { class: "muted", text: `Made ${new Date(character.created_at).toLocaleString()}` }),
    downloads(id),
    el("p", { class: "switch" }, toggle, " ", el("label", { for: "share", text: "Public share page" })),
    link,
  );
}

async function accountView() {
  show("t-account", "Account");
  buyTokens($("[data-buy]"));
  const me = await refreshBalance();
  $("[data-email]").textContent = me.email;
  purchaseReturn(me);
  if (me.email_verified === false) {
    $("[data-verify]").hidden = false;
    $("#resend").addEventListener("click", async () => {
      await api("POST", "/v1/me/verification").catch(() => {});
      $("[data-verify]").textContent = "A new link is on its way.";
    });
  }
  const pw = $("#password-form");
  pw.addEventListener("submit", async (event) => {
    event.preventDefault();
    busy(pw, true);
    const status = $("[data-status]", pw);
    try {
      await api("POST", "/v1/me/password", {
        json: { current_password: $("#current-password").value, new_password: $("#new-password").value },
      });
      status.textContent = "Password changed. Every other session and device has been signed out.";
      pw.reset();
    } catch (error) {
      status.textContent = error.message;
    } finally {
      busy(pw, false);
    }
  });
  const devices = $("#devices");
  const listDevices = async () => {
    const { tokens: found } = await api("GET", "/v1/tokens");
    devices.replaceChildren(
      ...(found.length ? [] : [el("li", { class: "muted", text: "No devices connected." })]),
      ...found.map((token) => {
        const revoke = el("button", { type: "button", class: "link", text: "Revoke", "aria-label": `Revoke ${token.name || "unnamed device"}` });
        revoke.addEventListener("click", async () => {
          await api("DELETE", `/v1/tokens/${token.id}`);
          await listDevices();
        });
        return el("li", {}, `${token.name || "Unnamed device"} · added ${new Date(token.created_at).toLocaleDateString()} `, revoke);
      }),
    );
  };
  connectExtension(listDevices);
  await listDevices();
  const del = $("#delete-form");
  del.addEventListener("submit", async (event) => {
    event.preventDefault();
    busy(del, true);
    try {
      await api("DELETE", "/v1/me", { json: { password: $("#delete-password").value } });
      location.assign("/login");
    } catch (error) {
      fail(del, error);
      busy(del, false);
    }
  });
}

function tokenFromLink() {
  return new URLSearchParams(location.hash.slice(1)).get("token") || "";
}

async function verifyView() {
  show("t-verify", "Verify your email");
  const status = $("#verify-status");
  try {
    const done = await api("POST", "/v1/auth/verify-email", { json: { token: tokenFromLink() } });
    status.textContent = done.granted ? `Email verified: ${tokens(done.granted)} added.` : "Email verified.";
  } catch (error) {
    status.textContent = error.message;
  }
}

function resetView() {
  show("t-reset", "New password");
  const form = $("#reset-form");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    busy(form, true);
    try {
      await api("POST", "/v1/auth/password-reset/confirm", {
        json: { token: tokenFromLink(), new_password: $("#reset-password").value },
      });
      $("[data-status]", form).replaceChildren("Password set. ", el("a", { href: "/login", text: "Log in" }));
    } catch (error) {
      fail(form, error);
      busy(form, false);
    }
  });
}

// --- routing ------------------------------------------------------------------

const PUBLIC = {
  "/login": loginView,
  "/signup": signupView,
  "/verify-email": verifyView,
  "/reset-password": resetView,
};
const PRIVATE = [
  [/^\/$/, createView],
  [/^\/gallery$/, galleryView],
  [/^\/account$/, accountView],
  [/^\/generations\/([0-9a-f-]{36})$/, progressView],
  [/^\/characters\/([0-9a-f-]{36})$/, characterView],
];

async function start() {
  const path = location.pathname.replace(/\/+$/, "") || "/";
  try {
    const current = await api("GET", "/v1/auth/session");
    session.csrf = current.csrf_token;
    session.user = current.user;
  } catch (error) {
    if (error.status !== 401) throw error;
  }
  if (session.user) {
    $("#nav").hidden = false;
    $("#logout").addEventListener("click", async () => {
      await api("DELETE", "/v1/auth/session").catch(() => {});
      location.assign("/login");
    });
  }
  if (PUBLIC[path]) {
    if (session.user && (path === "/login" || path === "/signup")) return location.replace("/");
    return PUBLIC[path]();
  }
  if (!session.user) return location.replace("/login");
  for (const [pattern, render] of PRIVATE) {
    const match = path.match(pattern);
    if (match) {
      const shown = render(...match.slice(1));
      if (render !== accountView) refreshBalance().catch(() => ($("#balance").textContent = ""));
      return shown;
    }
  }
  view.replaceChildren(el("h1", { text: "Not found" }), el("p", {}, el("a", { href: "/", text: "Back to BitBuddies" })));
}

start().catch((error) => {
  view.replaceChildren(el("p", { role: "alert", text: error.message || "Something went wrong." }));
});
