// Secrets and configmaps (key names; values only on request and only where the token may read
// them), namespaces, nodes, and the audit log for admins.

import { describe, get, nsPath, post, query, seg } from "./api.js";
import { age, clear, confirmDialog, gate, h, toast } from "./dom.js";

function keysTable(kind, items, app) {
  const ns = app.ns;
  const verb = kind === "secrets" ? "read" : "get";
  const rows = items.map((o) => {
    const values = h("dl", { class: "values", hidden: true });
    const show = gate(
      h("button", { type: "button", class: "small", "aria-label": `Show values of ${o.name}`, "aria-expanded": "false" }, "Show values"),
      app.caps.can(kind, verb, ns),
      `${kind}:${verb}`,
    );
    show.addEventListener("click", async () => {
      if (!values.hidden) {
        values.hidden = true;
        clear(values);
        show.textContent = "Show values";
        show.setAttribute("aria-expanded", "false");
        return;
      }
      try {
        const resp = await get(`${nsPath(ns)}/${kind}/${seg(o.name)}`);
        const data = (resp.secret || resp.configmap || {}).data || {};
        clear(values).append(...Object.entries(data).flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
        values.hidden = false;
        show.textContent = "Hide values";
        show.setAttribute("aria-expanded", "true");
      } catch (err) {
        clear(values).append(h("dd", { class: "error" }, describe(err)));
        values.hidden = false;
      }
    });
    return h(
      "tr",
      { dataset: { name: o.name } },
      h("th", { scope: "row" }, o.name),
      h("td", { class: "keys" }, Object.keys(o.data || {}).sort().join(", ") || "—"),
      h("td", { class: "num" }, String(o.version || 0)),
      h("td", {}, show, values),
    );
  });
  return h(
    "table",
    { class: "list", id: kind },
    h("thead", {}, h("tr", {}, ["Name", "Keys", "Version", "Values"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 4 }, "None."))),
  );
}

export async function configView(app) {
  const main = document.getElementById("main");
  main.append(h("h1", {}, `Secrets & configmaps · ${app.ns}`));
  for (const [kind, title] of [
    ["secrets", "Secrets"],
    ["configmaps", "Configmaps"],
  ]) {
    const section = h("section", {}, h("h2", {}, title));
    main.append(section);
    try {
      const resp = await get(`${nsPath(app.ns)}/${kind}`);
      section.append(keysTable(kind, resp[kind] || [], app));
    } catch (err) {
      section.append(h("p", { class: "error" }, describe(err)));
    }
  }
}

export async function namespacesView(app) {
  const main = document.getElementById("main");
  const resp = await get("/v1/namespaces");
  const rows = (resp.namespaces || []).map((n) =>
    h(
      "tr",
      {},
      h("th", { scope: "row" }, h("a", { href: `#/ns/${seg(n.name)}/services` }, n.name)),
      h("td", {}, n.description || ""),
      h("td", {}, Object.entries(n.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ")),
    ),
  );
  main.append(
    h("h1", {}, "Namespaces"),
    h(
      "table",
      { class: "list", id: "namespaces" },
      h("thead", {}, h("tr", {}, ["Name", "Description", "Labels"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows),
    ),
  );
}

const cpu = (m) => (m ? `${(Number(m) / 1000).toFixed(1)}` : "0");
const mem = (b) => (b ? `${Math.round(Number(b) / 2 ** 20)} MiB` : "0");

export async function nodesView(app) {
  const main = document.getElementById("main");
  const body = h("tbody", { id: "node-rows" });
  main.append(
    h("h1", {}, "Nodes"),
    h(
      "table",
      { class: "list", id: "nodes" },
      h(
        "thead",
        {},
        h("tr", {}, ["Node", "Status", "Address", "CPU (alloc/cap)", "Memory (alloc/cap)", "Instances", "Heartbeat", "Actions"].map((c) => h("th", { scope: "col" }, c))),
      ),
      body,
    ),
  );
  async function load() {
    const nodes = (await get("/v1/nodes")).nodes || [];
    const may = app.caps.can("nodes", "update");
    const action = (n, verb, label, danger = false) => {
      const b = gate(h("button", { type: "button", class: "small", "aria-label": `${label} ${n.id}` }, label), may, "nodes:update");
      b.addEventListener("click", async () => {
        if (danger && !(await confirmDialog({ title: `${label} ${n.id}?`, body: "Its instances move to other nodes.", confirmLabel: label, danger: true }))) return;
        try {
          await post(`/v1/nodes/${seg(n.id)}:${verb}`, {});
          toast(`${label}: ${n.id}`, "ok");
          await load();
        } catch (err) {
          toast(describe(err), "error");
        }
      });
      return b;
    };
    clear(body).append(
      ...(nodes.length
        ? nodes.map((n) =>
            h(
              "tr",
              { dataset: { node: n.id } },
              h("th", { scope: "row" }, n.id),
              h("td", {}, [n.status, n.cordoned ? "cordoned" : "", n.draining ? "draining" : ""].filter(Boolean).join(", ")),
              h("td", {}, n.address || ""),
              h("td", { class: "num" }, `${cpu((n.allocated || {}).cpuMillis)}/${cpu((n.capacity || {}).cpuMillis)}`),
              h("td", { class: "num" }, `${mem((n.allocated || {}).memoryBytes)}/${mem((n.capacity || {}).memoryBytes)}`),
              h("td", { class: "num" }, String(n.instances || 0)),
              h("td", {}, n.lastHeartbeat ? `${age(n.lastHeartbeat)} ago` : ""),
              h("td", { class: "row-actions" }, n.cordoned ? action(n, "uncordon", "Uncordon") : action(n, "cordon", "Cordon"), action(n, "drain", "Drain", true)),
            ),
          )
        : [h("tr", {}, h("td", { colspan: 8 }, "No nodes registered."))]),
    );
  }
  await load();
}

export async function auditView(app) {
  const main = document.getElementById("main");
  main.append(h("h1", {}, "Audit log"));
  if (!app.caps.can("admin", "list")) {
    main.append(h("p", { role: "alert" }, "The audit log is for administrators (needs admin:list)."));
    return;
  }
  const subject = h("input", { type: "text", id: "audit-subject", placeholder: "everyone" });
  const body = h("tbody", { id: "audit-rows" });
  const more = h("button", { type: "button", id: "audit-more" }, "Load more");
  const form = h("form", { class: "toolbar" }, h("label", { for: "audit-subject" }, "Subject"), subject, h("button", { type: "submit" }, "Show"));
  main.append(
    form,
    h(
      "table",
      { class: "list", id: "audit" },
      h("thead", {}, h("tr", {}, ["Time", "Subject", "Method", "Resource", "Namespace/name", "Outcome", "Detail"].map((c) => h("th", { scope: "col" }, c)))),
      body,
    ),
    more,
  );
  let since = "0";
  async function load(reset) {
    if (reset) {
      since = "0";
      clear(body);
    }
    const resp = await get(`/v1/admin/audit${query({ sinceId: since, limit: 200, subject: subject.value.trim() })}`);
    for (const e of resp.events || []) {
      body.append(
        h(
          "tr",
          { class: e.outcome === "failure" ? "failure" : "" },
          h("td", {}, new Date(Number(e.timestampMs)).toISOString().replace("T", " ").slice(0, 19)),
          h("td", {}, e.subject || ""),
          h("td", {}, (e.method || "").split("/").pop()),
          h("td", {}, `${e.resource}:${e.verb}`),
          h("td", {}, [e.namespace, e.name].filter(Boolean).join("/")),
          h("td", {}, `${e.outcome} ${e.code || ""}`),
          h("td", {}, e.detail || ""),
        ),
      );
    }
    since = resp.nextSinceId || "0";
    more.disabled = since === "0";
  }
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    load(true).catch((err) => body.append(h("tr", {}, h("td", { colspan: 7, class: "error" }, describe(err)))));
  });
  more.addEventListener("click", () => load(false));
  await load(true);
}
