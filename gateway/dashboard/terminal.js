// An exec terminal: xterm.js over the exec WebSocket (/v1/namespaces/{ns}/exec/{target}/ws).
// Browsers cannot set headers on a WebSocket, so the token goes as the `bearer.<token>`
// subprotocol next to `rune.exec.v1` (never in the URL). Keystrokes go out as binary stdin, a
// resize of the widget as a `resize` message; the server's ExecResponses come back as JSON text.

import { nsPath, seg, session } from "./api.js";
import { field, h } from "./dom.js";
import { Terminal } from "./vendor/xterm/xterm.mjs";
import { FitAddon } from "./vendor/addon-fit/addon-fit.mjs";

const enc = new TextEncoder();

function b64bytes(s) {
  const bin = atob(s || "");
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/** "ls -l" runs through sh; a bare word is the program itself. */
export function commandOf(text) {
  const t = text.trim() || "sh";
  return /[\s|&;<>()$`'"*?]/.test(t) ? ["sh", "-c", t] : [t];
}

export function terminalView(app, target) {
  const main = document.getElementById("main");
  const ns = app.ns;
  const command = h("input", { type: "text", id: "term-command", value: "sh", autocomplete: "off", spellcheck: "false" });
  const tty = h("input", { type: "checkbox", id: "term-tty", checked: true });
  const connect = h("button", { type: "submit", class: "primary", id: "term-connect" }, "Run");
  const eof = h("button", { type: "button", id: "term-eof", disabled: true }, "Send EOF");
  const disconnect = h("button", { type: "button", id: "term-close", disabled: true }, "Disconnect");
  const status = h("p", { id: "term-status", "aria-live": "polite" }, "Not connected.");
  const box = h("div", { id: "terminal", class: "terminal", "aria-label": `Terminal in ${target}` });
  if (!app.caps.can("exec", "exec", ns)) {
    connect.disabled = true;
    connect.title = "Your token may not do this (needs exec:exec)";
    connect.dataset.denied = "exec:exec";
  }
  main.append(
    h("h1", {}, `Terminal · ${target}`),
    h(
      "form",
      { class: "toolbar", id: "term-form" },
      field("Command", command),
      h("span", { class: "field" }, tty, h("label", { for: "term-tty" }, "TTY")),
      connect,
      eof,
      disconnect,
    ),
    status,
    box,
  );

  const term = new Terminal({ convertEol: true, cursorBlink: true, fontSize: 14, scrollback: 5000 });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(box);
  fit.fit();
  box.dataset.size = `${term.rows} ${term.cols}`;
  let ws = null;

  const send = (msg) => {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(msg);
  };
  term.onData((d) => send(enc.encode(d)));
  // The size is also left on the element (rows cols, as `stty size` prints it) for people and tests.
  term.onResize(({ cols, rows }) => {
    box.dataset.size = `${rows} ${cols}`;
    send(JSON.stringify({ resize: { width: cols, height: rows } }));
  });
  const observer = new ResizeObserver(() => fit.fit());
  observer.observe(box);

  function finish(text, exit) {
    status.textContent = text;
    status.dataset.state = "closed";
    if (exit !== undefined) status.dataset.exit = String(exit);
    eof.disabled = disconnect.disabled = true;
    connect.disabled = !!connect.dataset.denied;
  }

  function start() {
    if (ws) ws.close();
    term.reset();
    delete status.dataset.exit;
    status.dataset.state = "connecting";
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const path = `${nsPath(ns)}/exec/${target.split("/").map(seg).join("/")}/ws`;
    const sock = new WebSocket(`${proto}//${location.host}${path}`, ["rune.exec.v1", `bearer.${session.token}`]);
    ws = sock;
    sock.binaryType = "arraybuffer";
    status.textContent = "Connecting…";
    connect.disabled = true;
    let exited = false;
    sock.onopen = () => {
      sock.send(
        JSON.stringify({
          command: commandOf(command.value),
          tty: tty.checked,
          terminalSize: { width: term.cols, height: term.rows },
        }),
      );
      eof.disabled = disconnect.disabled = false;
      status.textContent = "Running.";
      status.dataset.state = "open";
      term.focus();
    };
    sock.onmessage = (ev) => {
      const msg = JSON.parse(ev.data);
      if (msg.stdout !== undefined) term.write(b64bytes(msg.stdout));
      else if (msg.stderr !== undefined) term.write(b64bytes(msg.stderr));
      else if (msg.exit) {
        exited = true;
        const e = msg.exit;
        const code = e.code || 0;
        finish(e.signaled ? `Ended by ${e.signal} (exit ${code}).` : `Exited with code ${code}.`, code);
      } else if (msg.error) {
        exited = true;
        finish(`Error: ${msg.error.message}`);
      } else if (msg.status && msg.status.message) status.textContent = msg.status.message;
    };
    sock.onclose = () => {
      if (ws === sock) ws = null;
      if (!exited) finish("Disconnected.");
    };
  }

  main.querySelector("#term-form").addEventListener("submit", (e) => {
    e.preventDefault();
    start();
  });
  eof.addEventListener("click", () => send(new Uint8Array(0)));
  disconnect.addEventListener("click", () => ws && ws.close());
  return () => {
    observer.disconnect();
    if (ws) ws.close();
    term.dispose();
  };
}
