// One service: its status, instances (live), health and probe results, actions and revision history.

import { del, describe, get, nsPath, post, query, seg } from "./api.js";
import { age, clear, confirmDialog, enumLabel, field, gate, h, toast } from "./dom.js";
import { diffView } from "./diff.js";
import { statusBadge } from "./services.js";

const INSTANCE = "INSTANCE_STATUS_";

function ports(svc) {
  return (svc.ports || []).map((p) => `${p.name}:${p.port}${p.targetPort ? `→${p.targetPort}` : ""}/${p.protocol || "TCP"}`).join(", ");
}

// Where an instance's ports are reached: its address and host port for each declared port, by name.
function reached(i) {
  const hp = i.hostPorts || {};
  return Object.keys(hp).sort().map((k) => `${i.ip || "127.0.0.1"}:${hp[k]}→${k}`).join(", ");
}

/** Run an action, report it (label: the toast, or a function of the action's result that makes
 * it), and keep the button disabled while it runs. */
async function act(button, label, fn) {
  button.disabled = true;
  try {
    const got = await fn();
    toast(typeof label === "function" ? label(got) : label, "ok");
  } catch (err) {
    toast(describe(err), "error");
  } finally {
    button.disabled = !!button.dataset.denied;
  }
}

export async function serviceView(app, name) {
  const main = document.getElementById("main");
  const ns = app.ns;
  const base = `${nsPath(ns)}/services/${seg(name)}`;
  const can = (resource, verb) => app.caps.can(resource, verb, ns);
  let svc = (await get(base)).service;

  const heading = h("h1", {}, `Service ${name}`);
  const facts = h("dl", { class: "facts", id: "svc-facts" });
  const scaleInput = h("input", { type: "number", id: "scale-input", min: "0", value: String(svc.scale || 0) });
  const scaleBtn = gate(h("button", { type: "button", id: "scale-btn" }, "Scale"), can("services", "scale"), "services:scale");
  const restartBtn = gate(h("button", { type: "button", id: "restart-btn" }, "Restart"), can("instances", "update"), "instances:update");
  const stopBtn = gate(h("button", { type: "button", id: "stop-btn" }, "Stop (scale to 0)"), can("services", "scale"), "services:scale");
  const deleteBtn = gate(h("button", { type: "button", id: "delete-btn", class: "danger" }, "Delete…"), can("services", "delete"), "services:delete");
  const logsLink = h("a", { href: `#/ns/${seg(ns)}/logs/${seg(name)}`, class: "button", id: "logs-link" }, "Logs");
  const instBody = h("tbody", { id: "instance-rows" });
  const health = h("section", { id: "health", "aria-labelledby": "health-h" }, h("h2", { id: "health-h" }, "Health"));
  const history = h("section", { id: "history", "aria-labelledby": "history-h" }, h("h2", { id: "history-h" }, "History"));

  main.append(
    h("p", {}, h("a", { href: `#/ns/${seg(ns)}/services` }, "← Services")),
    heading,
    facts,
    h(
      "div",
      { class: "toolbar", role: "group", "aria-label": "Actions" },
      field("Scale to", scaleInput),
      scaleBtn,
      restartBtn,
      stopBtn,
      logsLink,
      deleteBtn,
    ),
    h(
      "section",
      { "aria-labelledby": "inst-h" },
      h("h2", { id: "inst-h" }, "Instances"),
      h(
        "table",
        { class: "list", id: "instances" },
        h(
          "thead",
          {},
          h("tr", {}, ["Name", "State", "Restarts", "Node", "Ports", "Last exit / message", "Age", "Actions"].map((c) => h("th", { scope: "col" }, c))),
        ),
        instBody,
      ),
    ),
    health,
    history,
  );

  function renderFacts() {
    clear(facts).append(
      ...[
        ["Status", statusBadge(svc.status)],
        ["Message", svc.statusMessage || "—"],
        ["Desired", String(svc.scale || 0)],
        ["Runtime", svc.runtime || "container"],
        ["Generation", String((svc.metadata && svc.metadata.generation) || 0)],
        ["Ports", ports(svc) || "—"],
        ["Age", age(svc.metadata && svc.metadata.createdAt)],
      ].flatMap(([k, v]) => [h("dt", {}, k), h("dd", { dataset: { fact: k.toLowerCase() } }, v)]),
    );
  }

  function instances() {
    return [...app.instances.items.values()]
      .filter((i) => i.serviceName === name && i.status !== "INSTANCE_STATUS_DELETED")
      .sort((a, b) => (a.name < b.name ? -1 : 1));
  }

  function instanceRow(i) {
    const state = enumLabel(i.status, INSTANCE);
    const running = i.status === "INSTANCE_STATUS_RUNNING";
    const action = (verb, label) =>
      gate(
        h("button", {
          type: "button",
          class: "small",
          "aria-label": `${label} ${i.name}`,
          onclick: (e) => act(e.currentTarget, `${label}: ${i.name}`, () => post(`${nsPath(ns)}/instances/${seg(i.id)}:${verb}`, {})),
        }, label),
        can("instances", "update"),
        "instances:update",
      );
    const execLink = can("exec", "exec") && running
      ? h("a", { href: `#/ns/${seg(ns)}/exec/${seg(`instance/${i.id}`)}`, class: "button small", "aria-label": `Terminal in ${i.name}` }, "Terminal")
      : h("a", { class: "button small", "aria-label": `Terminal in ${i.name}`, "aria-disabled": "true", title: running ? "Your token may not do this (needs exec:exec)" : "Not running" }, "Terminal");
    return h(
      "tr",
      { dataset: { instance: i.name, state: state.toLowerCase() } },
      h("th", { scope: "row" }, i.name),
      h("td", {}, h("span", { class: `badge s-${state.toLowerCase()}` }, state)),
      h("td", { class: "num" }, String((i.metadata && i.metadata.restartCount) || 0)),
      h("td", {}, i.nodeId || "local"),
      h("td", {}, reached(i) || "—"),
      h("td", { class: "message" }, i.statusMessage || "—"),
      h("td", {}, age(i.createdAt)),
      h(
        "td",
        { class: "row-actions" },
        h("a", { href: `#/ns/${seg(ns)}/logs/${seg(`instance/${i.id}`)}`, class: "button small", "aria-label": `Logs of ${i.name}` }, "Logs"),
        execLink,
        action("restart", "Restart"),
        running ? action("stop", "Stop") : action("start", "Start"),
      ),
    );
  }

  function renderInstances() {
    const list = instances();
    clear(instBody).append(...(list.length ? list.map(instanceRow) : [h("tr", {}, h("td", { colspan: 8 }, "No instances."))]));
  }

  let healthTimer = null;
  async function renderHealth() {
    healthTimer = null;
    try {
      const resp = await get(`${nsPath(ns)}/health${query({ componentType: "service", name, includeChecks: true })}`);
      const c = (resp.components || [])[0] || {};
      const checks = c.checkResults || [];
      clear(health).append(
        h("h2", { id: "health-h" }, "Health"),
        h("p", { id: "health-status" }, statusBadge(c.status, "HEALTH_STATUS_"), " ", c.message || ""),
        checks.length
          ? h(
              "table",
              { class: "list" },
              h("thead", {}, h("tr", {}, ["Probe", "Result", "Message", "Successes", "Failures"].map((t) => h("th", { scope: "col" }, t)))),
              h(
                "tbody",
                {},
                checks.map((r) =>
                  h(
                    "tr",
                    {},
                    h("td", {}, enumLabel(r.type, "HEALTH_CHECK_TYPE_")),
                    h("td", {}, enumLabel(r.status, "HEALTH_STATUS_")),
                    h("td", {}, r.message || ""),
                    h("td", { class: "num" }, String(r.consecutiveSuccesses || 0)),
                    h("td", { class: "num" }, String(r.consecutiveFailures || 0)),
                  ),
                ),
              ),
            )
          : h("p", {}, "No probes configured."),
      );
    } catch (err) {
      clear(health).append(h("h2", { id: "health-h" }, "Health"), h("p", { class: "error" }, describe(err)));
    }
  }
  // Health follows the instances' watch events (at most one request per second), never a timer loop.
  const healthSoon = () => {
    if (!healthTimer) healthTimer = setTimeout(renderHealth, 1000);
  };

  async function renderHistory() {
    let revisions = [];
    try {
      revisions = (await get(`${base}/revisions`)).revisions || [];
    } catch (err) {
      clear(history).append(h("h2", { id: "history-h" }, "History"), h("p", { class: "error" }, describe(err)));
      return;
    }
    const diffBox = h("div", { id: "revision-diff", "aria-live": "polite" });
    const rows = revisions.map((r, idx) => {
      const current = idx === 0;
      const show = h("button", { type: "button", class: "small", "aria-label": `Diff revision ${r.revision} with the current spec` }, "Diff");
      show.addEventListener("click", () => clear(diffBox).append(diffView(svc, r.service, ["current", `revision ${r.revision}`])));
      const back = gate(
        h("button", { type: "button", class: "small", dataset: { rollback: String(r.revision) }, disabled: current }, `Roll back to ${r.revision}`),
        can("services", "update"),
        "services:update",
      );
      back.addEventListener("click", async () => {
        const ok = await confirmDialog({
          title: `Roll back ${name}?`,
          body: `Restore revision ${r.revision} (generation ${r.generation}) as a new revision; the scale stays ${svc.scale}.`,
          confirmLabel: "Roll back",
        });
        // The server's word: rolled back, or already at that spec (a rollback keeps the scale).
        const said = (res) => res?.status?.message || `Rolled back to revision ${r.revision}`;
        if (ok) await act(back, said, () => post(`${base}:rollback`, { toRevision: r.revision }));
      });
      return h(
        "tr",
        { dataset: { revision: String(r.revision) } },
        h("th", { scope: "row" }, `${r.revision}${current ? " (current)" : ""}`),
        h("td", { class: "num" }, String(r.generation || 0)),
        h("td", {}, r.changeCause || (r.rollbackOf && r.rollbackOf !== "0" ? `rollback to ${r.rollbackOf}` : "—")),
        h("td", {}, r.createdBy || ""),
        h("td", {}, age(r.createdAt)),
        h("td", { class: "row-actions" }, show, back),
      );
    });
    clear(history).append(
      h("h2", { id: "history-h" }, "History"),
      h(
        "table",
        { class: "list", id: "revisions" },
        h("thead", {}, h("tr", {}, ["Revision", "Generation", "Cause", "By", "Age", "Actions"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, rows),
      ),
      diffBox,
    );
  }

  scaleBtn.addEventListener("click", () =>
    act(scaleBtn, `Scaling ${name} to ${scaleInput.value}`, () => post(`${base}:scale`, { scale: Number(scaleInput.value) })),
  );
  stopBtn.addEventListener("click", async () => {
    const ok = await confirmDialog({ title: `Stop ${name}?`, body: "Scale it to 0 (the last scale is remembered).", confirmLabel: "Stop" });
    if (ok) await act(stopBtn, `Stopping ${name}`, () => post(`${base}:scale`, { scale: 0 }));
  });
  restartBtn.addEventListener("click", () =>
    act(restartBtn, `Restarting the instances of ${name}`, () =>
      Promise.all(instances().map((i) => post(`${nsPath(ns)}/instances/${seg(i.id)}:restart`, {}))),
    ),
  );
  deleteBtn.addEventListener("click", async () => {
    const ok = await confirmDialog({
      title: `Delete ${name}?`,
      body: `This deletes the service ${name} in ${ns} and stops all its instances.`,
      confirmLabel: "Delete",
      danger: true,
      typeToConfirm: name,
    });
    if (!ok) return;
    await act(deleteBtn, `Deleted ${name}`, async () => {
      await del(base);
      app.go("services");
    });
  });

  let lastGeneration = svc.metadata && svc.metadata.generation;
  const onService = () => {
    const now = app.services.items.get(name);
    if (!now) {
      heading.textContent = `Service ${name} (deleted)`;
      return;
    }
    svc = now;
    renderFacts();
    renderInstances();
    const gen = svc.metadata && svc.metadata.generation;
    if (gen !== lastGeneration) {
      lastGeneration = gen;
      renderHistory();
    }
  };
  renderFacts();
  renderInstances();
  renderHealth();
  renderHistory();
  const off1 = app.services.subscribe(onService);
  const off2 = app.instances.subscribe(() => {
    renderInstances();
    healthSoon();
  });
  return () => {
    off1();
    off2();
    clearTimeout(healthTimer);
  };
}
