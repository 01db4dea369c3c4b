// @ts-check
// The REST API, with the access token of this browser session (if any).
// The token lives in sessionStorage only: never in a URL or localStorage.

const TOKEN_KEY = "inbox.accessToken";

/** Thrown for a 401: the page asks for a token. */
export class Unauthorized extends Error {}

/** Any other refusal, with the API's own words. */
export class ApiFailure extends Error {
  /** @param {number} status @param {string} message */
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** @returns {string} */
export function token() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) ?? "";
  } catch {
    return "";
  }
}

/** @param {string} value */
export function setToken(value) {
  try {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // Storage refused (private mode): the token lasts until the page closes.
  }
}

/** @param {HeadersInit} [extra] */
function headers(extra) {
  const h = new Headers(extra);
  const t = token();
  if (t) h.set("Authorization", `Bearer ${t}`);
  return h;
}

/**
 * @param {string} path
 * @param {RequestInit} [init]
 * @returns {Promise<any>}
 */
export async function request(path, init = {}) {
  const response = await fetch(path, { ...init, headers: headers(init.headers) });
  if (response.status === 401) throw new Unauthorized("unauthorized");
  const text = await response.text();
  /** @type {any} */
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    throw new ApiFailure(response.status, body?.error || `${response.status} ${response.statusText}`);
  }
  return body;
}

/** @param {string} path @param {unknown} body @param {Record<string, string>} [extra] */
export function post(path, body, extra = {}) {
  return request(path, {
    method: "POST",
    body: JSON.stringify(body),
    headers: { "Content-Type": "application/json", ...extra },
  });
}

/** @param {Record<string, string | undefined>} params */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}

/** @type {Map<string, Promise<string>>} */
const blobs = new Map();

/**
 * A URL the page can show a media file by: the API's own when no token is
 * needed (the browser caches and streams it), else the bytes fetched with
 * the token, as an object URL (kept for the page's life).
 * @param {string} url
 * @returns {Promise<string>}
 */
export function mediaSource(url) {
  if (!token()) return Promise.resolve(url);
  let pending = blobs.get(url);
  if (!pending) {
    pending = fetch(url, { headers: headers() }).then(async (r) => {
      if (!r.ok) throw new ApiFailure(r.status, `media: ${r.status}`);
      return URL.createObjectURL(await r.blob());
    });
    pending.catch(() => blobs.delete(url));
    blobs.set(url, pending);
  }
  return pending;
}
