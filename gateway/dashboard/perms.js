// What the signed-in token may do, so the page can disable what it may not (the server still decides).
//
// The API has no "may I?" call. WhoAmI names the user's policies and the token's scope (a call needs
// both). Each policy's rules come from PolicyGet when the token may read policies (admins); otherwise
// the built-in policies' rules below are used (a browser test checks them against the server's), and a
// custom policy the token cannot read counts as allowing everything: the button stays enabled and
// the server's 403 is shown.

import { ApiError, get, seg } from "./api.js";

const RESOURCES = ["services", "instances", "logs", "exec", "health", "secrets", "configmaps", "namespaces", "nodes", "tokens"];
const rules = (verbs) => RESOURCES.map((resource) => ({ resource, verbs, namespace: "*" }));

export const BUILTIN = {
  root: [{ resource: "*", verbs: ["*"], namespace: "*" }],
  admin: [{ resource: "*", verbs: ["*"], namespace: "*" }],
  readwrite: rules(["get", "list", "watch", "create", "update", "delete", "scale", "exec", "read"]),
  readonly: rules(["get", "list", "watch"]),
};

const ANYTHING = [{ resource: "*", verbs: ["*"], namespace: "*" }];

/** rbac.allows: some rule covers resource:verb@namespace ("" = cluster-scoped). */
export function allows(ruleList, resource, verb, namespace) {
  return ruleList.some(
    (r) =>
      (r.resource === "*" || r.resource === resource) &&
      (r.verbs.includes("*") || r.verbs.includes(verb)) &&
      (r.namespace === "*" || (namespace !== "" && namespace !== "*" && r.namespace === namespace)),
  );
}

async function rulesOf(name) {
  try {
    const resp = await get(`/v1/admin/policies/${seg(name)}`);
    return (resp.policy && resp.policy.rules) || [];
  } catch (err) {
    if (!(err instanceof ApiError)) throw err;
    return BUILTIN[name] || ANYTHING;
  }
}

/** The capabilities of the caller described by a WhoAmI response. */
export async function capabilities(whoami) {
  const user = (await Promise.all((whoami.policies || []).map(rulesOf))).flat();
  const scoped = whoami.tokenPolicies || [];
  const scope = scoped.length ? (await Promise.all(scoped.map(rulesOf))).flat() : null;
  return {
    /** True when resource:verb in namespace is allowed by the user's policies and the token's scope. */
    can(resource, verb, namespace = "") {
      return allows(user, resource, verb, namespace) && (scope === null || allows(scope, resource, verb, namespace));
    },
  };
}
