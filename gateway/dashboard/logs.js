// Live logs of a service or an instance: follow (SSE), tail, filter, stdout/stderr, timestamps,
// lifecycle events, one colour per instance. Lines arrive in batches (at most every FLUSH_MS) into
// a virtual list that keeps the newest MAX_LINES, so a fast writer cannot freeze the page.

import { ApiError, describe, nsPath, query, seg, session, stream } from "./api.js";
import { field, h } from "./dom.js";

export const MAX_LINES = 50000;
const LINE_PX = 17; // .log .line height in style.css
const FLUSH_MS = 100;
const COLOURS = 8;

export function logsView(app, target) {
  const main = document.getElementById("main");
  const ns = app.ns;
  const follow = h("input", { type: "checkbox", id: "log-follow", checked: true });
  const tail = h("input", { type: "number", id: "log-tail", min: "0", value: "100" });
  const filter = h("input", { type: "text", id: "log-filter", placeholder: "text or /regex/", autocomplete: "off" });
  const streamSel = h(
    "select",
    { id: "log-stream" },
    h("option", { value: "" }, "stdout and stderr"),
    h("option", { value: "stdout" }, "stdout"),
    h("option", { value: "stderr" }, "stderr"),
  );
  const timestamps = h("input", { type: "checkbox", id: "log-timestamps" });
  const events = h("input", { type: "checkbox", id: "log-events", checked: true });
  const apply = h("button", { type: "submit", class: "primary" }, "Apply");
  const state = h("p", { id: "log-state", "aria-live": "polite" });
  const out = h("div", { id: "log-lines", class: "log", role: "log", "aria-label": `Logs of ${target}`, tabindex: "0" });
  const back = target.startsWith("instance/") ? "" : target;
  main.append(
    h("p", {}, h("a", { href: back ? `#/ns/${seg(ns)}/services/${seg(back)}` : `#/ns/${seg(ns)}/services` }, "← Back")),
    h("h1", {}, `Logs · ${target}`),
    h(
      "form",
      { class: "toolbar", id: "log-form" },
      h("span", { class: "field" }, follow, h("label", { for: "log-follow" }, "Follow")),
      field("Tail", tail),
      field("Filter", filter),
      field("Stream", streamSel),
      h("span", { class: "field" }, timestamps, h("label", { for: "log-timestamps" }, "Timestamps")),
      h("span", { class: "field" }, events, h("label", { for: "log-events" }, "Events")),
      apply,
    ),
    state,
    out,
  );

  // A virtual list: every line is kept (up to MAX_LINES) but only the rows in view exist in the
  // DOM, so the cost of a batch does not grow with the log. Rows have one fixed height (no wrap).
  const spacer = h("div", { class: "spacer" });
  const view = h("div", { class: "window" });
  spacer.append(view);
  out.append(spacer);
  const colourOf = new Map();
  let lines = [];
  let pending = [];
  let received = 0;
  let frame = 0;
  let drawing = 0;
  let stick = true;
  let abort = null;

  function row(m) {
    return h(
      "div",
      { class: `line c${m.colour} ${m.kind}` },
      h("span", { class: "who" }, m.who),
      h("span", { class: "text" }, m.text),
    );
  }

  function draw() {
    drawing = 0;
    spacer.style.height = `${lines.length * LINE_PX}px`;
    if (stick) out.scrollTop = out.scrollHeight;
    const first = Math.max(0, Math.floor(out.scrollTop / LINE_PX) - 5);
    const last = Math.min(lines.length, first + Math.ceil(out.clientHeight / LINE_PX) + 10);
    view.style.transform = `translateY(${first * LINE_PX}px)`;
    view.replaceChildren(...lines.slice(first, last).map(row));
    out.dataset.shown = String(lines.length);
    out.dataset.received = String(received);
  }

  function flush() {
    frame = 0;
    if (!pending.length) return;
    for (const m of pending) {
      const who = m.instanceName || m.instanceId || "";
      if (!colourOf.has(who)) colourOf.set(who, colourOf.size % COLOURS);
      const kind = m.stream === "event" ? "event" : m.stream === "stderr" ? "stderr" : "stdout";
      lines.push({ who, kind, colour: colourOf.get(who), text: m.content || (m.status && m.status.message) || "" });
    }
    pending = [];
    if (lines.length > MAX_LINES) lines = lines.slice(lines.length - MAX_LINES);
    draw();
  }

  out.addEventListener("scroll", () => {
    stick = out.scrollTop + out.clientHeight >= out.scrollHeight - LINE_PX;
    if (!drawing) drawing = requestAnimationFrame(draw);
  });

  function add(msg) {
    received += 1;
    pending.push(msg);
    if (!frame) frame = setTimeout(() => requestAnimationFrame(flush), FLUSH_MS);
  }

  async function run() {
    if (abort) abort.abort();
    abort = new AbortController();
    const mine = abort;
    colourOf.clear();
    lines = [];
    received = 0;
    pending = [];
    stick = true;
    draw();
    const params = {
      tail: tail.value || "0",
      filter: filter.value,
      stream: streamSel.value,
      timestamps: timestamps.checked,
      showEvents: events.checked,
    };
    const path = `${nsPath(ns)}/logs/${target.split("/").map(seg).join("/")}`;
    try {
      if (follow.checked) {
        state.textContent = "Following…";
        await stream(`${path}${query({ ...params, follow: true })}`, {
          signal: mine.signal,
          onEvent: (ev) => {
            const msg = JSON.parse(ev.data);
            if (ev.event === "error") add({ stream: "event", content: `error: ${msg.message}` });
            else add(msg);
          },
        });
        state.textContent = "The log stream ended.";
      } else {
        state.textContent = "Loading…";
        const resp = await fetch(`${path}${query(params)}`, {
          headers: { Authorization: `Bearer ${session.token}` },
          signal: mine.signal,
        });
        const text = await resp.text();
        if (!resp.ok) throw new ApiError(resp.status, JSON.parse(text || "{}"));
        for (const line of text.split("\n")) if (line) add(JSON.parse(line));
        state.textContent = `${received} lines.`;
      }
    } catch (err) {
      if (!mine.signal.aborted) state.textContent = describe(err);
    }
  }

  main.querySelector("#log-form").addEventListener("submit", (e) => {
    e.preventDefault();
    run();
  });
  run();
  return () => {
    if (abort) abort.abort();
    if (frame) clearTimeout(frame);
  };
}
