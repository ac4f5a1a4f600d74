// The popup: pair (code + server address), or choose the active character, switch the
// buddy on or off here or everywhere, and unpair. It never sees the token: every call to
// the API goes through the service worker (background.js).

const $ = (id) => document.getElementById(id);
const DEFAULT_SETTINGS = { enabled: true, offSites: [], active: null };

const ask = (message) => chrome.runtime.sendMessage(message);

async function currentSite() {
  // Opened as a page (chrome-extension://…/popup.html?site=example.com) it is told the
  // site; opened from the toolbar, activeTab lets it read the active tab's address.
  const given = new URLSearchParams(location.search).get("site");
  if (given) return given;
  try {
    const [tab] = await chrome.tabs.query({ active: true, currentWindow: true });
    const url = new URL(tab?.url ?? "");
    return url.protocol === "http:" || url.protocol === "https:" ? url.hostname : null;
  } catch {
    return null;
  }
}

async function getSettings() {
  const { settings } = await chrome.storage.sync.get("settings");
  return { ...DEFAULT_SETTINGS, ...(settings ?? {}) };
}

async function changeSettings(change) {
  const settings = await getSettings();
  change(settings);
  await chrome.storage.sync.set({ settings });
}

function showUnpaired(state) {
  $("unpaired").hidden = false;
  $("paired").hidden = true;
  const api = $("api");
  if (!api.value) api.value = state.defaultApi;
}

function characterRow(character, active) {
  const li = document.createElement("li");
  const label = document.createElement("label");
  const radio = document.createElement("input");
  radio.type = "radio";
  radio.name = "active";
  radio.value = character.id;
  radio.checked = character.id === active;
  radio.addEventListener("change", async () => {
    await changeSettings((s) => {
      s.active = character.id;
    });
    $("status").textContent = "Your buddy changed.";
  });
  const thumb = document.createElement("img");
  thumb.className = "thumb";
  thumb.alt = "";
  thumb.width = 40;
  thumb.height = 40;
  ask({ type: "popup:thumb", id: character.id }).then((answer) => {
    if (answer?.src) thumb.src = answer.src;
  });
  const text = document.createElement("span");
  text.className = "prompt";
  text.textContent = character.prompt || "Untitled";
  if (character.created_at) text.title = new Date(character.created_at).toLocaleString();
  label.append(radio, thumb, text);
  li.append(label);
  return li;
}

function showPaired(state, site) {
  $("unpaired").hidden = true;
  $("paired").hidden = false;
  $("server").textContent = state.api;
  const list = $("character-list");
  list.replaceChildren(...state.characters.map((c) => characterRow(c, state.active)));
  $("empty").hidden = state.characters.length > 0;
  $("global-switch").checked = state.settings.enabled;
  $("site-row").hidden = !site;
  if (site) {
    $("site-name").textContent = `(${site})`;
    $("site-switch").checked = !state.settings.offSites.includes(site);
  }
}

async function render() {
  const [state, site] = await Promise.all([ask({ type: "popup:state" }), currentSite()]);
  $("loading").hidden = true;
  if (state.paired) showPaired(state, site);
  else showUnpaired(state);
  return site;
}

document.addEventListener("DOMContentLoaded", async () => {
  const site = await render();

  $("pair-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = event.submitter ?? $("pair-form").querySelector("button");
    button.disabled = true;
    $("pair-error").textContent = "";
    try {
      const answer = await ask({ type: "popup:pair", api: $("api").value, code: $("code").value });
      if (answer?.ok) {
        $("code").value = "";
        await render();
        $("status").textContent = "Paired. Your buddy joins you on the next page.";
      } else {
        $("pair-error").textContent = answer?.error ?? "Pairing failed.";
      }
    } finally {
      button.disabled = false;
    }
  });

  $("global-switch").addEventListener("change", async (event) => {
    const on = event.target.checked;
    await changeSettings((s) => {
      s.enabled = on;
    });
    $("status").textContent = on ? "Your buddy is on." : "Your buddy is off everywhere.";
  });

  $("site-switch").addEventListener("change", async (event) => {
    const on = event.target.checked;
    await changeSettings((s) => {
      s.offSites = s.offSites.filter((h) => h !== site);
      if (!on) s.offSites.push(site);
    });
    $("status").textContent = on ? `On at ${site}.` : `Off at ${site}.`;
  });

  $("unpair").addEventListener("click", async () => {
    $("unpair").disabled = true;
    try {
      const answer = await ask({ type: "popup:unpair" });
      await render();
      $("status").textContent = answer?.revoked
        ? "Unpaired."
        : "Unpaired here; the server could not be reached, so revoke this device on your account page.";
    } finally {
      $("unpair").disabled = false;
    }
  });
});
