"""Checks of a service spec against the store: referenced objects exist, dependencies form no cycle."""

from __future__ import annotations

import re

from rune.api import service_pb2
from runed.core import errors
from runed.core.errors import FieldViolation
from runed.model import objects
from runed.store.base import Store

# ``{{secret:name/KEY}}`` and ``{{configmap:name/KEY}}`` in env values.
_TEMPLATE_RE = re.compile(r"\{\{\s*(secret|configmap)\s*:\s*([^/}\s]+)\s*/\s*([^}\s]*)\s*\}\}")


def check_references(store: Store, svc: service_pb2.Service) -> None:
    """Referenced services, secrets and configmaps must exist, and dependencies must not form a cycle."""
    ns = svc.namespace
    out: list[FieldViolation] = []

    def need(kind: str, name: str, where: str, field_path: str) -> None:
        if store.get(kind, where, name) is None:
            out.append(FieldViolation(field_path, f'{kind} "{name}" not found in namespace "{where}"'))

    for i, ef in enumerate(svc.env_from):
        where = ef.namespace or ns
        if ef.secret_name:
            need(objects.SECRET, ef.secret_name, where, f"service.env_from[{i}].secret_name")
        if ef.configmap_name:
            need(objects.CONFIGMAP, ef.configmap_name, where, f"service.env_from[{i}].configmap_name")
    for key, value in sorted(svc.env.items()):
        for kind, name, k in _TEMPLATE_RE.findall(value):
            if not k:
                out.append(FieldViolation(f"service.env[{key}]", f"{{{{{kind}:{name}/KEY}}}}: the key is required"))
            need(kind, name, ns, f"service.env[{key}]")
    for i, sm in enumerate(svc.secret_mounts):
        need(objects.SECRET, sm.secret_name or sm.name, ns, f"service.secret_mounts[{i}]")
    for i, cm in enumerate(svc.configmap_mounts):
        need(objects.CONFIGMAP, cm.configmap_name or cm.name, ns, f"service.configmap_mounts[{i}]")
    for i, dep in enumerate(svc.dependencies):
        where = dep.namespace or ns
        p = f"service.dependencies[{i}]"
        if dep.secret:
            need(objects.SECRET, dep.secret, where, f"{p}.secret")
        elif dep.configmap:
            need(objects.CONFIGMAP, dep.configmap, where, f"{p}.configmap")
        elif dep.service:
            if (where, dep.service) == (ns, svc.name):
                out.append(FieldViolation(f"{p}.service", "a service cannot depend on itself"))
                continue
            need(objects.SERVICE, dep.service, where, f"{p}.service")
            cycle = _find_cycle(store, (ns, svc.name), (where, dep.service))
            if cycle:
                path = " -> ".join(f"{n}/{s}" for n, s in [(ns, svc.name), *cycle])
                out.append(FieldViolation(f"{p}.service", f"dependency cycle: {path}"))
    if out:
        raise errors.InvalidArgument(
            "dependency validation failed: " + "; ".join(f"{v.field}: {v.description}" for v in out), violations=out
        )


def _find_cycle(store: Store, origin: tuple[str, str], start: tuple[str, str]) -> list[tuple[str, str]]:
    """The path from ``start`` back to ``origin`` through stored dependencies, or [] (depth-first)."""
    stack: list[tuple[tuple[str, str], list[tuple[str, str]]]] = [(start, [start])]
    visited: set[tuple[str, str]] = set()
    while stack:
        node, path = stack.pop()
        if node in visited:
            continue
        visited.add(node)
        rec = store.get(objects.SERVICE, *node)
        if rec is None:
            continue
        for dep in rec.data.get("spec", {}).get("dependencies", []):
            if not dep.get("service"):
                continue
            nxt = (dep.get("namespace") or node[0], dep["service"])
            if nxt == origin:
                return [*path, nxt]
            stack.append((nxt, [*path, nxt]))
    return []
