// Settings a build for another server changes; nothing else in the extension names a host.
// The web app's origin must also be listed in manifest.json's externally_connectable.
export const DEFAULT_API = "http://127.0.0.1:8000";

// The service worker asks the API for the token's validity and the character list at
// most this often; between two checks every page gets the buddy from the cache at once.
export const REVALIDATE_MS = 5000;

// How long a page waits for a due check before it shows the cached buddy anyway.
export const REVALIDATE_WAIT_MS = 2000;

// Asset bytes kept in the extension (Cache API), least recently used out beyond this.
export const CACHE_MAX_BYTES = 20 * 1024 * 1024;
