// The service worker: the only part of the extension that holds the device token or talks
// to the API. Pages get the buddy's picture from here as a data: URL, from a cache, so the
// API is asked at most once every REVALIDATE_MS whatever the number of pages opened.
//
// Storage:
//   chrome.storage.local  (trusted contexts only: this worker and the popup)
//     pairing     {token, api}          the device token and the API origin it belongs to
//     characters  [{id, prompt, created_at}]   the last list the API gave
//     assetIndex  {url: {bytes, used}}  what the Cache API "bitbuddies-assets" holds
//   chrome.storage.sync   (content scripts read it; nothing secret)
//     settings    {enabled, offSites: [hostname], active: characterId | null}

import { CACHE_MAX_BYTES, DEFAULT_API, REVALIDATE_MS, REVALIDATE_WAIT_MS } from "./config.js";

const VERSION = chrome.runtime.getManifest().version;
const ASSET_CACHE = "bitbuddies-assets";
const DEFAULT_SETTINGS = { enabled: true, offSites: [], active: null };
const PAIR_NAME = "Chrome extension";
const FETCH_TIMEOUT_MS = 15000;

// What this worker asked the API since it started; read by tests and benchmarks.
const stats = { listFetches: 0, assetFetches: 0, cacheHits: 0, unauthorized: 0 };
globalThis.bitbuddiesStats = stats;

// Content scripts must not see the token: keep storage.local to this worker and the popup.
try {
  chrome.storage.local.setAccessLevel({ accessLevel: "TRUSTED_CONTEXTS" }).catch(() => {});
} catch {
  // older Chromium: content scripts could read storage.local, but ours never do
}

class Unauthorized extends Error {}

// ---- pairing ----------------------------------------------------------------------------

async function getPairing() {
  const { pairing } = await chrome.storage.local.get("pairing");
  return pairing && pairing.token && pairing.api ? pairing : null;
}

async function setPairing(pairing) {
  const previous = await getPairing();
  await clearAssets();
  await chrome.storage.local.set({ pairing, characters: [] });
  lastChecked = 0;
  if (previous && previous.token !== pairing.token) {
    revoke(previous).catch(() => {}); // best effort: the replaced token should not linger
  }
}

async function forget(token) {
  const current = await getPairing();
  if (token && current && current.token !== token) return; // a newer pairing: keep it
  await chrome.storage.local.remove(["pairing", "characters"]);
  await clearAssets();
  lastChecked = 0;
}

async function revoke(pairing) {
  const response = await timedFetch(`${pairing.api}/v1/tokens/current`, {
    method: "DELETE",
    headers: { Authorization: `Bearer ${pairing.token}` },
  });
  return response.status === 204 || response.status === 401;
}

function apiOrigin(address) {
  let url;
  try {
    url = new URL(address);
  } catch {
    return null;
  }
  return url.protocol === "https:" || url.protocol === "http:" ? url.origin : null;
}

// ---- the API ----------------------------------------------------------------------------

async function timedFetch(url, init = {}) {
  return fetch(url, {
    credentials: "omit",
    cache: "no-store",
    ...init,
    signal: AbortSignal.timeout(FETCH_TIMEOUT_MS),
  });
}

async function apiFetch(pairing, path) {
  const response = await timedFetch(pairing.api + path, {
    headers: { Authorization: `Bearer ${pairing.token}` },
  });
  if (response.status === 401) {
    stats.unauthorized += 1;
    await forget(pairing.token); // revoked: the buddy goes from the next page on
    throw new Unauthorized();
  }
  if (!response.ok) throw new Error(`${path} answered ${response.status}`);
  return response;
}

let lastChecked = 0; // in memory: a restarted worker checks again, which is what we want
let checking = null;

function revalidate() {
  checking ??= (async () => {
    const pairing = await getPairing();
    if (!pairing) return;
    lastChecked = Date.now();
    stats.listFetches += 1;
    const body = await (await apiFetch(pairing, "/v1/characters")).json();
    const characters = (body.characters ?? []).map((c) => ({
      id: String(c.id),
      prompt: String(c.prompt ?? ""),
      created_at: c.created_at ?? null,
    }));
    await chrome.storage.local.set({ characters });
    await dropAssetsExcept(pairing.api, new Set(characters.map((c) => c.id)));
  })().finally(() => {
    checking = null;
  });
  return checking;
}

// Check the token and the list when the last check is older than REVALIDATE_MS; wait for
// that check at most REVALIDATE_WAIT_MS, then go on with what is cached.
async function freshEnough() {
  if (Date.now() - lastChecked < REVALIDATE_MS) return;
  const check = revalidate();
  check.catch((error) => {
    if (!(error instanceof Unauthorized)) console.warn("BitBuddies: check failed", error);
  });
  await Promise.race([check, new Promise((r) => setTimeout(r, REVALIDATE_WAIT_MS))]).catch(
    () => {},
  );
}

// ---- asset cache (Cache API, least recently used out beyond CACHE_MAX_BYTES) ------------

let indexLock = Promise.resolve();

function withIndex(change) {
  const run = indexLock.then(async () => {
    const { assetIndex = {} } = await chrome.storage.local.get("assetIndex");
    const result = await change(assetIndex);
    await chrome.storage.local.set({ assetIndex });
    return result;
  });
  indexLock = run.catch(() => {});
  return run;
}

async function remember(url, bytes) {
  await withIndex(async (index) => {
    index[url] = { bytes, used: Date.now() };
    let total = Object.values(index).reduce((sum, entry) => sum + entry.bytes, 0);
    const cache = await caches.open(ASSET_CACHE);
    const oldestFirst = Object.entries(index).sort((a, b) => a[1].used - b[1].used);
    for (const [key, entry] of oldestFirst) {
      if (total <= CACHE_MAX_BYTES) break;
      await cache.delete(key);
      delete index[key];
      total -= entry.bytes;
    }
  });
}

async function touch(url) {
  await withIndex(async (index) => {
    if (index[url]) index[url].used = Date.now();
  });
}

async function dropAssetsExcept(api, keepIds) {
  await withIndex(async (index) => {
    const cache = await caches.open(ASSET_CACHE);
    for (const url of Object.keys(index)) {
      const match = url.startsWith(api) && url.match(/\/v1\/characters\/([^/]+)\/assets\//);
      if (!match || !keepIds.has(decodeURIComponent(match[1]))) {
        await cache.delete(url);
        delete index[url];
      }
    }
  });
  encoded.clear();
}

async function clearAssets() {
  encoded.clear();
  await withIndex(async (index) => {
    for (const key of Object.keys(index)) delete index[key];
    await caches.delete(ASSET_CACHE);
  });
}

async function assetBlob(pairing, id, kind) {
  const path = `/v1/characters/${encodeURIComponent(id)}/assets/${kind}`;
  const url = pairing.api + path;
  const cache = await caches.open(ASSET_CACHE);
  const cached = await cache.match(url);
  if (cached) {
    stats.cacheHits += 1;
    touch(url).catch(() => {});
    return { url, blob: await cached.blob() };
  }
  stats.assetFetches += 1;
  const response = await apiFetch(pairing, path);
  const blob = await response.blob();
  if (blob.size <= CACHE_MAX_BYTES) {
    await cache.put(url, new Response(blob, { headers: { "Content-Type": blob.type } }));
    await remember(url, blob.size);
  }
  return { url, blob };
}

// The last few data: URLs made, so a page view does not base64 the same bytes again.
const encoded = new Map();

async function assetDataUrl(pairing, id, kind) {
  const { url, blob } = await assetBlob(pairing, id, kind);
  if (encoded.has(url)) return encoded.get(url);
  const bytes = new Uint8Array(await blob.arrayBuffer());
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  const type = blob.type || (kind === "png" ? "image/png" : "image/webp");
  const dataUrl = `data:${type};base64,${btoa(binary)}`;
  encoded.set(url, dataUrl);
  while (encoded.size > 4) encoded.delete(encoded.keys().next().value);
  return dataUrl;
}

// ---- settings ---------------------------------------------------------------------------

async function getSettings() {
  const { settings } = await chrome.storage.sync.get("settings");
  return { ...DEFAULT_SETTINGS, ...(settings ?? {}) };
}

function chosen(characters, settings) {
  return characters.find((c) => c.id === settings.active) ?? characters[0] ?? null;
}

// ---- messages from our own pages (content scripts, popup) -------------------------------

const fromContentScript = {
  async "buddy:get"(message) {
    const settings = await getSettings();
    const site = String(message.site ?? "");
    if (!settings.enabled || settings.offSites.includes(site)) return { show: false };
    if (!(await getPairing())) return { show: false };
    await freshEnough();
    const pairing = await getPairing(); // a 401 just now forgot it
    if (!pairing) return { show: false };
    const { characters = [] } = await chrome.storage.local.get("characters");
    const character = chosen(characters, settings);
    if (!character) return { show: false };
    return { show: true, id: character.id, src: await assetDataUrl(pairing, character.id, "webp") };
  },
};

const fromPopup = {
  async "popup:state"() {
    await freshEnough();
    const pairing = await getPairing();
    const settings = await getSettings();
    const { characters = [] } = await chrome.storage.local.get("characters");
    return {
      paired: Boolean(pairing),
      api: pairing?.api ?? null,
      defaultApi: DEFAULT_API,
      characters,
      active: chosen(characters, settings)?.id ?? null,
      settings,
      version: VERSION,
    };
  },

  async "popup:thumb"(message) {
    const pairing = await getPairing();
    if (!pairing) return { src: null };
    return { src: await assetDataUrl(pairing, String(message.id), "png") };
  },

  async "popup:pair"(message) {
    const api = apiOrigin(String(message.api ?? ""));
    const code = String(message.code ?? "").trim();
    if (!api) return { ok: false, error: "Type the server's address, like https://example.com." };
    if (!code) return { ok: false, error: "Type the pairing code." };
    let response;
    try {
      response = await timedFetch(`${api}/v1/tokens/pair`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ code, name: PAIR_NAME }),
      });
    } catch {
      return { ok: false, error: `Could not reach ${api}.` };
    }
    if (response.status === 429) {
      return { ok: false, error: "Too many tries. Wait a minute, then try again." };
    }
    if (response.status === 400) {
      return { ok: false, error: "That code is not valid or has expired. Get a new one." };
    }
    if (response.status !== 201) {
      return { ok: false, error: `The server answered ${response.status}. Try again later.` };
    }
    const body = await response.json();
    if (!body.token) return { ok: false, error: "The server sent no token." };
    await setPairing({ token: String(body.token), api });
    await revalidate().catch(() => {});
    return { ok: true };
  },

  async "popup:unpair"() {
    const pairing = await getPairing();
    if (!pairing) return { ok: true, revoked: true };
    const revoked = await revoke(pairing).catch(() => false);
    await forget(pairing.token);
    return { ok: true, revoked };
  },
};

chrome.runtime.onMessage.addListener((message, sender, sendResponse) => {
  if (sender.id !== chrome.runtime.id) return false;
  const ownPage = sender.url?.startsWith(chrome.runtime.getURL(""));
  const handler = (ownPage ? fromPopup : fromContentScript)[message?.type];
  if (!handler) return false;
  handler(message, sender).then(sendResponse, (error) => {
    if (!(error instanceof Unauthorized)) console.warn("BitBuddies:", message.type, error);
    sendResponse({ ok: false, show: false, error: String(error?.message ?? error) });
  });
  return true; // answered asynchronously
});

// ---- messages from the web app (externally_connectable origins only) --------------------

chrome.runtime.onMessageExternal.addListener((message, sender, sendResponse) => {
  const answer = async () => {
    if (message?.type === "bitbuddies:hello") {
      return { ok: true, paired: Boolean(await getPairing()), version: VERSION };
    }
    if (message?.type === "bitbuddies:pair") {
      const token = typeof message.token === "string" ? message.token.trim() : "";
      const api = apiOrigin(sender.origin ?? sender.url ?? "");
      if (!token || token.length > 1024 || !api) return { ok: false, error: "invalid_request" };
      await setPairing({ token, api });
      revalidate().catch(() => {});
      return { ok: true };
    }
    return { ok: false, error: "unknown_message" };
  };
  answer().then(sendResponse, () => sendResponse({ ok: false, error: "internal" }));
  return true;
});
