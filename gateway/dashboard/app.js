// The dashboard shell: sign-in, the header (WhoAmI, namespace), the navigation and the hash router.
// Routes: #/ns/<namespace>/<view>[/<name>]; the token is never part of them.

import { ApiError, describe, get, session, setToken } from "./api.js";
import { clear, field, h, toast } from "./dom.js";
import { Live } from "./live.js";
import { capabilities } from "./perms.js";
import { servicesView } from "./services.js";
import { serviceView } from "./service.js";
import { logsView } from "./logs.js";
import { terminalView } from "./terminal.js";
import { castView } from "./castview.js";
import { auditView, configView, namespacesView, nodesView } from "./resources.js";

const main = document.getElementById("main");
const app = {
  ns: "default",
  caps: null,
  services: null,
  instances: null,
  cleanup: null,
  namespaces: [],
};

const VIEWS = {
  services: (name) => (name ? serviceView(app, name) : servicesView(app)),
  logs: (target) => logsView(app, target),
  exec: (target) => terminalView(app, target),
  cast: () => castView(app),
  config: () => configView(app),
  audit: () => auditView(app),
  namespaces: () => namespacesView(app),
  nodes: () => nodesView(app),
};

export function go(view, name = "", ns = app.ns) {
  location.hash = `#/ns/${encodeURIComponent(ns)}/${view}${name ? `/${encodeURIComponent(name)}` : ""}`;
}
app.go = go;

function parseHash() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (parts[0] === "ns" && parts[1]) return { ns: parts[1], view: parts[2] || "services", name: parts.slice(3).join("/") };
  return { ns: app.ns, view: "services", name: "" };
}

/** Live services and instances of the current namespace, shared by the views. */
function follow(ns) {
  if (app.services && app.services.ns === ns) return;
  if (app.services) app.services.stop();
  if (app.instances) app.instances.stop();
  app.services = new Live(ns, "services", "service", (s) => s.name);
  app.instances = new Live(ns, "instances", "instance", (i) => i.id);
  app.services.start();
  app.instances.start();
}

async function route() {
  if (!session.token || !app.caps) return;
  const { ns, view, name } = parseHash();
  app.ns = ns;
  renderHeader();
  follow(ns);
  if (app.cleanup) app.cleanup();
  app.cleanup = null;
  clear(main);
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.view === view) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const render = VIEWS[view] || VIEWS.services;
  try {
    app.cleanup = (await render(name)) || null;
  } catch (err) {
    main.append(h("p", { class: "error", role: "alert" }, describe(err)));
  }
  main.focus({ preventScroll: true });
}

function renderHeader() {
  const who = session.whoami;
  const el = document.getElementById("whoami");
  const policies = (who.tokenPolicies && who.tokenPolicies.length ? who.tokenPolicies : who.policies) || [];
  el.textContent = `${who.subjectName || who.subjectId} · ${policies.join(", ") || "no policies"} · ${who.authMethod || "token"}`;
  const sel = document.getElementById("ns");
  const names = app.namespaces.includes(app.ns) ? app.namespaces : [...app.namespaces, app.ns];
  if (sel.options.length !== names.length || sel.value !== app.ns) {
    sel.replaceChildren(...names.map((n) => h("option", { value: n, selected: n === app.ns }, n)));
  }
  const nav = document.getElementById("nav");
  if (!nav.childElementCount) {
    const link = (view, label, allowed = true) =>
      allowed
        ? h("a", { href: "#", dataset: { view }, onclick: (e) => (e.preventDefault(), go(view)) }, label)
        : h("a", { dataset: { view }, "aria-disabled": "true", title: "Your token may not do this" }, label);
    nav.append(
      link("services", "Services"),
      link("cast", "Cast", app.caps.can("services", "create", app.ns)),
      link("config", "Secrets & configmaps"),
      link("namespaces", "Namespaces"),
      link("nodes", "Nodes", app.caps.can("nodes", "list")),
      link("audit", "Audit log", app.caps.can("admin", "list")),
    );
  }
  document.getElementById("signout").hidden = false;
  document.getElementById("top").hidden = false;
}

async function signIn(token) {
  setToken(token);
  session.whoami = await get("/v1/auth/whoami");
  app.caps = await capabilities(session.whoami);
  try {
    const resp = await get("/v1/namespaces");
    app.namespaces = (resp.namespaces || []).map((n) => n.name).sort();
  } catch (err) {
    app.namespaces = ["default"];
    if (!(err instanceof ApiError)) throw err;
  }
}

function signOut() {
  setToken("");
  session.whoami = null;
  app.caps = null;
  if (app.services) app.services.stop();
  if (app.instances) app.instances.stop();
  app.services = app.instances = null;
  document.getElementById("nav").replaceChildren();
  document.getElementById("signout").hidden = true;
  document.getElementById("whoami").textContent = "";
  showSignIn();
}

function showSignIn(message = "") {
  if (app.cleanup) app.cleanup();
  app.cleanup = null;
  const input = h("input", { type: "password", id: "token", name: "token", autocomplete: "off", required: true, spellcheck: "false" });
  const err = h("p", { class: "error", role: "alert", id: "signin-error" }, message);
  const form = h(
    "form",
    { class: "signin", id: "signin" },
    h("h1", {}, "Sign in to runed"),
    h("p", {}, "Paste an API token (it stays in this tab's session storage and is sent only as a bearer header)."),
    field("Token", input),
    h("button", { type: "submit", class: "primary" }, "Sign in"),
    err,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      await signIn(input.value.trim());
      input.value = "";
      await route();
    } catch (e2) {
      setToken("");
      err.textContent = e2 instanceof ApiError && e2.status === 401 ? "That token was not accepted." : describe(e2);
      input.focus();
      input.select();
    }
  });
  clear(main).append(form);
  input.focus();
}

async function start() {
  document.getElementById("signout").addEventListener("click", signOut);
  // Another namespace: the same list view, or the services list when the view was about one object.
  const LISTS = ["services", "cast", "config", "audit", "namespaces", "nodes"];
  document.getElementById("ns").addEventListener("change", (e) => {
    const { view } = parseHash();
    go(LISTS.includes(view) ? view : "services", "", e.target.value);
  });
  window.addEventListener("hashchange", route);
  // Leaving the page ends its streams at once: an open watch or log stream holds one of the
  // browser's few connections to this host, and a page kept in the back/forward cache would keep it.
  window.addEventListener("pagehide", () => {
    if (app.cleanup) app.cleanup();
    app.cleanup = null;
    if (app.services) app.services.stop();
    if (app.instances) app.instances.stop();
    app.services = app.instances = null;
  });
  window.addEventListener("pageshow", (e) => {
    if (e.persisted) route();
  });
  if (session.token) {
    try {
      await signIn(session.token);
      await route();
      return;
    } catch {
      setToken("");
    }
  }
  showSignIn();
}

start().catch((err) => toast(describe(err), "error"));
