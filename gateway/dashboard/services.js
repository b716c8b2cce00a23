// The services of a namespace: a paged, filterable table kept current by the watch streams.
// Only one page of rows exists in the DOM, so 1,000 services (and 5,000 instances) stay light.

import { clear, field, h, age, enumLabel } from "./dom.js";

export const PAGE_SIZE = 50;

/** Running instances per service name. */
export function readyCounts(instances) {
  const ready = new Map();
  for (const i of instances.items.values()) {
    if (i.status === "INSTANCE_STATUS_RUNNING") ready.set(i.serviceName, (ready.get(i.serviceName) || 0) + 1);
  }
  return ready;
}

export function statusBadge(status, prefix = "SERVICE_STATUS_") {
  const label = enumLabel(status, prefix);
  return h("span", { class: `badge s-${label.toLowerCase()}` }, label);
}

export function servicesView(app) {
  const main = document.getElementById("main");
  let page = 0;
  const filter = h("input", { type: "search", id: "svc-filter", placeholder: "name, status or runtime", autocomplete: "off" });
  const summary = h("p", { id: "svc-summary", "aria-live": "polite" });
  const body = h("tbody", { id: "svc-rows" });
  const prev = h("button", { type: "button", id: "svc-prev" }, "← Previous");
  const next = h("button", { type: "button", id: "svc-next" }, "Next →");
  const table = h(
    "table",
    { class: "list", id: "services" },
    h("caption", { class: "visually-hidden" }, `Services in ${app.ns}`),
    h(
      "thead",
      {},
      h("tr", {}, ["Name", "Status", "Ready", "Runtime", "Generation", "Age"].map((c) => h("th", { scope: "col" }, c))),
    ),
    body,
  );
  main.append(
    h("div", { class: "toolbar" }, h("h1", {}, `Services · ${app.ns}`), field("Filter", filter)),
    summary,
    table,
    h("nav", { class: "pager", "aria-label": "Pages" }, prev, next),
  );

  function matching() {
    const q = filter.value.trim().toLowerCase();
    const all = [...app.services.items.values()];
    const rows = q
      ? all.filter((s) =>
          [s.name, enumLabel(s.status, "SERVICE_STATUS_"), s.runtime].some((v) => String(v || "").toLowerCase().includes(q)),
        )
      : all;
    return rows.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  function render() {
    if (app.services.error) {
      clear(body).append(h("tr", {}, h("td", { colspan: 6, class: "error", role: "alert" }, app.services.error.message)));
      return;
    }
    if (!app.services.loaded) {
      summary.textContent = "Loading…";
      return;
    }
    const rows = matching();
    const pages = Math.max(1, Math.ceil(rows.length / PAGE_SIZE));
    page = Math.min(page, pages - 1);
    const shown = rows.slice(page * PAGE_SIZE, (page + 1) * PAGE_SIZE);
    const ready = readyCounts(app.instances);
    const now = Date.now();
    clear(body).append(
      ...shown.map((s) =>
        h(
          "tr",
          { dataset: { name: s.name } },
          h("th", { scope: "row" }, h("a", { href: `#/ns/${encodeURIComponent(app.ns)}/services/${encodeURIComponent(s.name)}` }, s.name)),
          h("td", { class: "status" }, statusBadge(s.status)),
          h("td", { class: "ready" }, `${ready.get(s.name) || 0}/${s.scale || 0}`),
          h("td", {}, s.runtime || "container"),
          h("td", { class: "num" }, String((s.metadata && s.metadata.generation) || 0)),
          h("td", {}, age(s.metadata && s.metadata.createdAt, now)),
        ),
      ),
    );
    const from = rows.length ? page * PAGE_SIZE + 1 : 0;
    summary.textContent = rows.length
      ? `${from}–${from + shown.length - 1} of ${rows.length} services (page ${page + 1} of ${pages})`
      : "No services here yet.";
    summary.dataset.total = String(rows.length);
    // For the benchmark (and devtools): when the list was first on screen, in ms since navigation.
    if (!performance.getEntriesByName("rune:services-listed").length) performance.mark("rune:services-listed");
    prev.disabled = page === 0;
    next.disabled = page >= pages - 1;
  }

  prev.addEventListener("click", () => {
    page = Math.max(0, page - 1);
    render();
  });
  next.addEventListener("click", () => {
    page += 1;
    render();
  });
  filter.addEventListener("input", () => {
    page = 0;
    render();
  });
  const offServices = app.services.subscribe(render);
  const offInstances = app.instances.subscribe(render);
  render();
  return () => {
    offServices();
    offInstances();
  };
}
