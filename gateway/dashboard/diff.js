// Line diffs of service specs (dry run vs current, revision vs revision), rendered as a table.
// Specs are tens of lines, so the plain longest-common-subsequence table is fast enough and simple.

import { h } from "./dom.js";

/** The spec a person compares: what they wrote, without status and bookkeeping. */
export function specOf(service) {
  if (!service) return {};
  const { status, statusMessage, statusFinal, metadata, id, ...spec } = service;
  return sortKeys(spec);
}

// Keys sorted; empty values (what protojson emits for unset fields) left out, so a diff shows what was set.
function sortKeys(v) {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === "object") {
    const kept = Object.keys(v)
      .sort()
      .map((k) => [k, sortKeys(v[k])])
      .filter(([, x]) => !isEmpty(x));
    return Object.fromEntries(kept);
  }
  return v;
}

function isEmpty(x) {
  if (x === "" || x === null || x === undefined) return true;
  if (typeof x === "string" && x.endsWith("_UNSPECIFIED")) return true;
  if (Array.isArray(x)) return x.length === 0;
  return typeof x === "object" && Object.keys(x).length === 0;
}

export const specText = (service) => (service ? JSON.stringify(specOf(service), null, 2) : "");

/** [{op: " "|"-"|"+", line}] turning `a` into `b`. */
export function diffLines(a, b) {
  const x = a ? a.split("\n") : [];
  const y = b ? b.split("\n") : [];
  const n = x.length;
  const m = y.length;
  const lcs = Array.from({ length: n + 1 }, () => new Uint16Array(m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i][j] = x[i] === y[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const out = [];
  let i = 0;
  let j = 0;
  while (i < n && j < m) {
    if (x[i] === y[j]) {
      out.push({ op: " ", line: x[i] });
      i++;
      j++;
    } else if (lcs[i + 1][j] >= lcs[i][j + 1]) out.push({ op: "-", line: x[i++] });
    else out.push({ op: "+", line: y[j++] });
  }
  while (i < n) out.push({ op: "-", line: x[i++] });
  while (j < m) out.push({ op: "+", line: y[j++] });
  return out;
}

/** A rendered diff of two services' specs (`from` may be null: everything is added). */
export function diffView(from, to, labels = ["current", "new"]) {
  const rows = diffLines(specText(from), specText(to));
  const changed = rows.filter((r) => r.op !== " ").length;
  const cls = { " ": "same", "-": "del", "+": "add" };
  return h(
    "figure",
    { class: "diff" },
    h("figcaption", {}, changed ? `${changed} changed lines: − ${labels[0]}, + ${labels[1]}` : "No changes"),
    h("pre", { dataset: { changed: String(changed) } }, rows.map((r) => h("span", { class: cls[r.op] }, `${r.op} ${r.line}\n`))),
  );
}
