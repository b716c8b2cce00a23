"""Fetching objects for the CLI: every page of a list, one object by name, and selector maps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rune.cli.client import Session, pb2
from rune.cli.commands.common import list_instances
from rune.cli.errors import EXIT_NOT_FOUND, EXIT_USAGE, CliError


def selector_map(expr: str | None, what: str) -> dict[str, str]:
    """An equality-only selector ``a=b,c=d`` as a map (for RPCs without set-based expressions)."""
    out: dict[str, str] = {}
    for part in (expr or "").split(","):
        if not part.strip():
            continue
        k, sep, v = part.partition("=")
        if not sep or k.endswith("!"):
            raise CliError(f"{what} {part!r}: only key=value terms are supported for this type", EXIT_USAGE)
        out[k.strip()] = v.strip().lstrip("=")
    return out


def _pages(fetch: Callable[[str], Any], field: str) -> tuple[list[Any], int]:
    """Every item over all pages (``next_page_token``), and the list revision if any."""
    items: list[Any] = []
    token, rev = "", 0
    while True:
        resp = fetch(token)
        items += list(getattr(resp, field))
        rev = getattr(resp, "revision", 0) or rev
        token = getattr(resp, "next_page_token", "")
        if not token:
            return items, rev


def list_objects(
    s: Session, kind: str, ns: str, labels: str | None, fields: str | None, page_size: int, service: str = ""
) -> tuple[list[Any], int]:
    """All objects of ``kind`` in ``ns`` (``*`` = all namespaces) with their list revision."""
    if kind == "services":
        svpb = pb2("service")
        return _pages(
            lambda tok: s.call(
                "ServiceService",
                "ListServices",
                svpb.ListServicesRequest(
                    namespace=ns,
                    label_selector_expr=labels or "",
                    field_selector_expr=fields or "",
                    page_size=page_size,
                    page_token=tok,
                ),
            ),
            "services",
        )
    if kind == "instances":
        ipb = pb2("instance")
        return _pages(
            lambda tok: s.call(
                "InstanceService",
                "ListInstances",
                ipb.ListInstancesRequest(
                    namespace=ns,
                    service_name=service,
                    label_selector_expr=labels or "",
                    field_selector_expr=fields or "",
                    page_size=page_size,
                    page_token=tok,
                ),
            ),
            "instances",
        )
    if kind == "namespaces":
        req = pb2("namespace").ListNamespacesRequest(
            label_selector=selector_map(labels, "-l"), field_selector=selector_map(fields, "--field-selector")
        )
        return list(s.call("NamespaceService", "ListNamespaces", req).namespaces), 0
    if kind == "nodes":
        req = pb2("node").ListNodesRequest(label_selector=selector_map(labels, "-l"))
        resp = s.call("NodeService", "ListNodes", req)
        return list(resp.nodes), resp.revision
    if labels:
        raise CliError(f"{kind} carry no labels; use --field-selector", EXIT_USAGE)
    fsel = selector_map(fields, "--field-selector")
    if kind == "secrets":
        req = pb2("secret").ListSecretsRequest(namespace=ns, field_selector=fsel)
        return list(s.call("SecretService", "ListSecrets", req).secrets), 0
    req = pb2("configmap").ListConfigmapsRequest(namespace=ns, field_selector=fsel)
    return list(s.call("ConfigmapService", "ListConfigmaps", req).configmaps), 0


def get_object(s: Session, kind: str, name: str, ns: str, show_values: bool = False) -> Any:
    """One object by name (instances also by id)."""
    import grpc

    if kind == "services":
        return s.call("ServiceService", "GetService", pb2("service").GetServiceRequest(name=name, namespace=ns)).service
    if kind == "instances":
        try:
            req = pb2("instance").GetInstanceRequest(id=name, namespace=ns)
            return s.call("InstanceService", "GetInstance", req).instance
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise
        insts = list_instances(s, ns)
        found = [i for i in insts if i.name == name]
        if not found:
            why = f'instance "{name}" not found in namespace "{ns}"'
            if any(i.service_name == name for i in insts):
                # `rune get instances web` meant as "web's instances" (upstream takes a name here too).
                why += f'; "{name}" is a service: rune get instances --service-name {name} lists its instances'
            raise CliError(why, EXIT_NOT_FOUND) from None
        return found[0]
    if kind == "namespaces":
        return s.call("NamespaceService", "GetNamespace", pb2("namespace").GetNamespaceRequest(name=name)).namespace
    if kind == "nodes":
        return s.call("NodeService", "GetNode", pb2("node").GetNodeRequest(id=name)).node
    if kind == "secrets":
        if show_values:
            req = pb2("secret").GetSecretRequest(name=name, namespace=ns)
            return s.call("SecretService", "GetSecret", req).secret
        found = [x for x in list_objects(s, "secrets", ns, None, f"name={name}", 0)[0] if x.name == name]
        if not found:
            raise CliError(f'secret "{name}" not found in namespace "{ns}"', EXIT_NOT_FOUND)
        return found[0]
    req = pb2("configmap").GetConfigmapRequest(name=name, namespace=ns)
    return s.call("ConfigmapService", "GetConfigmap", req).configmap
