// Cast: paste or upload a cast file, see the server's dry run as a diff against what runs now,
// then apply. The dry run is CreateService with dryRun (every check a real call makes, nothing
// written); the diff compares specs as the server returns them.

import { ApiError, describe, get, nsPath, post, query, seg } from "./api.js";
import { clear, field, gate, h, toast } from "./dom.js";
import { parseCast } from "./cast.js";
import { diffView } from "./diff.js";

export function castView(app) {
  const main = document.getElementById("main");
  const ns = app.ns;
  const text = h("textarea", { id: "cast-yaml", rows: "16", spellcheck: "false", placeholder: "service:\n  name: web\n  runtime: process\n  process:\n    command: [python3, -m, http.server]" });
  const file = h("input", { type: "file", id: "cast-file", accept: ".yaml,.yml,.json" });
  const cause = h("input", { type: "text", id: "cast-cause", placeholder: "why (kept in the history)" });
  const dry = h("button", { type: "button", id: "cast-dry-run", class: "primary" }, "Dry run");
  const apply = gate(h("button", { type: "button", id: "cast-apply", disabled: true }, "Apply"), app.caps.can("services", "create", ns), "services:create");
  const result = h("div", { id: "cast-result", "aria-live": "polite" });
  main.append(
    h("h1", {}, `Cast into ${ns}`),
    h("p", {}, "A cast file's services (the YAML `rune cast` reads). Nothing changes until you apply the dry run."),
    h("div", { class: "stack" }, h("label", { for: "cast-yaml" }, "Cast file"), text),
    h("div", { class: "toolbar" }, field("Or upload", file), field("Change cause", cause), dry, apply),
    result,
  );
  let planned = [];

  file.addEventListener("change", async () => {
    if (file.files && file.files[0]) text.value = await file.files[0].text();
  });
  text.addEventListener("input", () => {
    apply.disabled = true;
    planned = [];
  });

  dry.addEventListener("click", async () => {
    apply.disabled = true;
    planned = [];
    clear(result);
    const { services, problems } = parseCast(text.value, ns);
    if (problems.length) result.append(h("ul", { class: "error", role: "alert" }, problems.map((p) => h("li", {}, p))));
    let failed = problems.length > 0 || services.length === 0;
    if (!services.length && !problems.length) result.append(h("p", { class: "error", role: "alert" }, "No services in this cast file."));
    for (const svc of services) {
      const where = nsPath(svc.namespace);
      const section = h("section", { class: "plan", dataset: { service: svc.name || "" } }, h("h2", {}, `${svc.namespace}/${svc.name || "?"}`));
      result.append(section);
      try {
        // The route's body is the Service; the other request fields travel as query parameters.
        const resp = await post(`${where}/services${query({ dryRun: true, changeCause: cause.value })}`, svc);
        const would = resp.service;
        let current = null;
        try {
          current = (await get(`${where}/services/${seg(svc.name)}`)).service;
        } catch (err) {
          if (!(err instanceof ApiError && err.status === 404)) throw err;
        }
        section.append(h("p", { class: "verdict" }, (resp.status && resp.status.message) || (current ? "would be updated" : "would be created")));
        section.append(diffView(current, would, [current ? "running now" : "nothing", "after apply"]));
        planned.push(svc);
      } catch (err) {
        failed = true;
        section.append(h("pre", { class: "error", role: "alert" }, describe(err)));
      }
    }
    apply.disabled = failed || !!apply.dataset.denied;
    if (!failed) apply.focus();
  });

  apply.addEventListener("click", async () => {
    apply.disabled = true;
    try {
      for (const svc of planned) await post(`${nsPath(svc.namespace)}/services${query({ changeCause: cause.value })}`, svc);
      toast(`Cast ${planned.length} service(s)`, "ok");
      const only = planned.length === 1 && planned[0].namespace === ns ? planned[0].name : "";
      app.go("services", only);
    } catch (err) {
      clear(result).append(h("pre", { class: "error", role: "alert" }, describe(err)));
    }
  });
}
