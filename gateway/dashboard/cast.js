// Cast files (the YAML `rune cast` reads) to CreateService request bodies. The shape follows the
// CLI's cast format for services (rune.cli.castfile.service): the API's Service message in
// camelCase, plus the cast file's shorthands (process.command as a list, restartPolicy by name,
// probe types in lower case, intervalSeconds, configMounts). The server validates every field.

import { loadAll } from "./vendor/js-yaml/js-yaml.esm.min.mjs";

const RESTART = { always: "RESTART_POLICY_ALWAYS", onfailure: "RESTART_POLICY_ON_FAILURE", never: "RESTART_POLICY_NEVER" };
const PROBE = { http: "PROBE_TYPE_HTTP", tcp: "PROBE_TYPE_TCP", exec: "PROBE_TYPE_COMMAND", command: "PROBE_TYPE_COMMAND" };
// Accepted by cast files for compatibility, not carried by the API.
const DROPPED = ["networkPolicy", "affinity", "autoscale", "discovery", "imageRegistry", "registry", "skip"];

function probe(p) {
  const out = { ...p };
  const type = String(p.type || "").toLowerCase();
  out.type = PROBE[type] || p.type;
  if (typeof p.command === "string") out.command = ["sh", "-c", p.command];
  if ("intervalSeconds" in p) {
    out.periodSeconds = p.intervalSeconds;
    delete out.intervalSeconds;
  }
  return out;
}

/** One cast-file service mapping as the API's Service JSON. */
export function serviceBody(spec, namespace) {
  const svc = { ...spec };
  for (const k of DROPPED) delete svc[k];
  svc.namespace = spec.namespace || namespace;
  if (!svc.runtime) svc.runtime = spec.process ? "process" : "container";
  if (spec.scale === undefined) svc.scale = 1;
  if (spec.process) {
    const proc = { ...spec.process };
    if (Array.isArray(proc.command)) {
      proc.args = [...proc.command.slice(1).map(String), ...(proc.args || []).map(String)];
      proc.command = String(proc.command[0]);
    }
    svc.process = proc;
  }
  if (Array.isArray(spec.command)) svc.command = spec.command.map(String).join(" ");
  if (spec.restartPolicy) {
    const rp = String(spec.restartPolicy).replace(/[-_]/g, "").toLowerCase();
    svc.restartPolicy = RESTART[rp] || spec.restartPolicy;
  }
  if (spec.configMounts) {
    svc.configmapMounts = spec.configMounts;
    delete svc.configMounts;
  }
  if (spec.health) {
    svc.health = {};
    for (const kind of ["liveness", "readiness"]) if (spec.health[kind]) svc.health[kind] = probe(spec.health[kind]);
  }
  if (spec.env) svc.env = Object.fromEntries(Object.entries(spec.env).map(([k, v]) => [k, String(v)]));
  return svc;
}

/**
 * The services of a cast file's text (one or more YAML documents).
 * @returns {{services: object[], problems: string[]}}
 */
export function parseCast(text, namespace) {
  const services = [];
  const problems = [];
  let docs;
  try {
    docs = loadAll(text).filter((d) => d !== null && d !== undefined);
  } catch (err) {
    return { services, problems: [`YAML: ${err.message}`] };
  }
  for (const doc of docs) {
    if (typeof doc !== "object" || Array.isArray(doc)) {
      problems.push("each document must be a mapping with `service` or `services`");
      continue;
    }
    for (const key of Object.keys(doc)) {
      if (key === "service") services.push(doc.service);
      else if (key === "services") services.push(...(Array.isArray(doc.services) ? doc.services : []));
      else problems.push(`${key}: the dashboard casts services only (use \`rune cast\` for ${key})`);
    }
  }
  const bodies = services
    .filter((s) => s && typeof s === "object" && !s.skip)
    .map((s) => serviceBody(s, namespace));
  return { services: bodies, problems };
}
