// The REST client: JSON calls and Server-Sent Events, every one with `Authorization: Bearer`.
// The token lives in sessionStorage (this tab only, gone when it closes), never in a URL.
// EventSource cannot send headers, so streams are read with fetch and parsed here.

const TOKEN_KEY = "rune.dashboard.token";

export const session = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  whoami: null,
};

export function setToken(token) {
  session.token = token;
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** An error answer of the API: the HTTP status and the google.rpc.Status body. */
export class ApiError extends Error {
  constructor(status, body) {
    const message = (body && body.message) || `HTTP ${status}`;
    super(message);
    this.status = status;
    this.body = body || {};
    const info = (this.body.details || []).find((d) => d.reason);
    this.reason = info ? info.reason : "";
    this.violations = (this.body.details || []).flatMap((d) => d.fieldViolations || []);
  }
}

function headers(extra) {
  const h = { ...extra };
  if (session.token) h.Authorization = `Bearer ${session.token}`;
  return h;
}

export const nsPath = (ns) => `/v1/namespaces/${encodeURIComponent(ns)}`;
export const seg = (s) => encodeURIComponent(s);

/** One JSON call: the parsed body, or an ApiError. */
export async function call(method, path, body) {
  const init = { method, headers: headers({ Accept: "application/json" }), cache: "no-store" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  const text = await resp.text();
  let data = {};
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { message: text };
    }
  }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

export const get = (path) => call("GET", path);
export const post = (path, body = {}) => call("POST", path, body);
export const put = (path, body) => call("PUT", path, body);
export const del = (path) => call("DELETE", path);

/** A query string from an object (empty values left out). */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "" && v !== false) q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

/**
 * Read a Server-Sent Events response; `onEvent({event, data, id})` for each event.
 * Resolves when the server ends the stream; rejects with ApiError for an error status
 * (errors known before the first frame are the HTTP status itself) or on abort.
 */
export async function stream(path, { onEvent, signal, lastEventId, onOpen }) {
  const h = headers({ Accept: "text/event-stream" });
  if (lastEventId) h["Last-Event-ID"] = lastEventId;
  const resp = await fetch(path, { headers: h, signal, cache: "no-store" });
  if (!resp.ok) {
    let body = {};
    try {
      body = await resp.json();
    } catch {
      body = {};
    }
    throw new ApiError(resp.status, body);
  }
  if (onOpen) onOpen();
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  let ev = { event: "message", data: [], id: null };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let start = 0;
    let nl;
    while ((nl = buf.indexOf("\n", start)) >= 0) {
      let line = buf.slice(start, nl);
      start = nl + 1;
      if (line.endsWith("\r")) line = line.slice(0, -1);
      if (line === "") {
        if (ev.data.length) onEvent({ event: ev.event, data: ev.data.join("\n"), id: ev.id });
        ev = { event: "message", data: [], id: null };
        continue;
      }
      if (line[0] === ":") continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let v = colon < 0 ? "" : line.slice(colon + 1);
      if (v[0] === " ") v = v.slice(1);
      if (field === "data") ev.data.push(v);
      else if (field === "event") ev.event = v;
      else if (field === "id") ev.id = v;
    }
    buf = buf.slice(start);
  }
}

/** Every page of a list route (`key` names the repeated field), following next_page_token. */
export async function listAll(path, key, pageSize = 1000) {
  const items = [];
  let token = "";
  let revision = "0";
  for (;;) {
    const sep = path.includes("?") ? "&" : "?";
    const page = await get(`${path}${sep}pageSize=${pageSize}${token ? `&pageToken=${encodeURIComponent(token)}` : ""}`);
    items.push(...(page[key] || []));
    // The first page's revision: a watch from there replays whatever changed while paging.
    if (page.revision && revision === "0") revision = page.revision;
    token = page.nextPageToken || "";
    if (!token) return { items, revision };
  }
}

/** A human message for an error (the API's message; field violations listed). */
export function describe(err) {
  if (err instanceof ApiError) {
    const fields = err.violations.map((v) => `${v.field}: ${v.description}`);
    return [`${err.status}: ${err.message}`, ...fields].join("\n");
  }
  return String(err && err.message ? err.message : err);
}
