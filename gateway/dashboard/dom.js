// DOM helpers. Text always goes in as text (textContent), never as HTML: API data cannot inject markup.

/** h("button", {type: "button", onclick: f}, "Label", child...) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

/** A status line announced to screen readers. */
export function toast(message, kind = "info") {
  const t = document.getElementById("toast");
  t.className = kind;
  t.textContent = message;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => {
    t.textContent = "";
    t.className = "";
  }, 6000);
}

/** A modal confirmation (a native <dialog>: focus trapped, Escape cancels). Resolves true/false. */
export function confirmDialog({ title, body, confirmLabel, danger = false, typeToConfirm = "" }) {
  return new Promise((resolve) => {
    const input = typeToConfirm
      ? h("input", { type: "text", id: "confirm-input", autocomplete: "off", spellcheck: "false" })
      : null;
    const ok = h("button", { type: "submit", class: danger ? "danger" : "primary", disabled: !!typeToConfirm }, confirmLabel);
    const cancel = h("button", { type: "button", value: "cancel" }, "Cancel");
    const form = h(
      "form",
      { method: "dialog" },
      h("h2", {}, title),
      h("p", {}, body),
      input ? h("label", { for: "confirm-input" }, `Type ${typeToConfirm} to confirm`) : null,
      input,
      h("div", { class: "actions" }, cancel, ok),
    );
    const dlg = h("dialog", { "aria-label": title }, form);
    if (input) input.addEventListener("input", () => (ok.disabled = input.value !== typeToConfirm));
    let result = false;
    form.addEventListener("submit", () => (result = true));
    cancel.addEventListener("click", () => dlg.close());
    dlg.addEventListener("close", () => {
      dlg.remove();
      resolve(result);
    });
    document.body.append(dlg);
    dlg.showModal();
    (input || cancel).focus();
  });
}

/** "3m", "2h", "5d" since an RFC 3339 time. */
export function age(iso, now = Date.now()) {
  if (!iso) return "";
  const s = Math.max(0, Math.floor((now - Date.parse(iso)) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  if (s < 172800) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

/** The short form of a proto enum name: SERVICE_STATUS_RUNNING -> Running. */
export function enumLabel(value, prefix) {
  if (!value) return "Unknown";
  const v = String(value).startsWith(prefix) ? String(value).slice(prefix.length) : String(value);
  return v
    .toLowerCase()
    .split("_")
    .map((w) => w.charAt(0).toUpperCase() + w.slice(1))
    .join("");
}

/** A labelled field: <label for=id>text</label> + control. */
export function field(labelText, control) {
  return h("span", { class: "field" }, h("label", { for: control.id }, labelText), control);
}

/** Disable a control for what the token may not do, and say why (title + aria-describedby-ish text). */
export function gate(el, allowed, need) {
  if (!allowed) {
    el.disabled = true;
    el.title = `Your token may not do this (needs ${need})`;
    el.dataset.denied = need;
  }
  return el;
}
