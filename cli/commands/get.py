"""``rune get`` and ``rune describe``: list, show and watch objects in table, wide, JSON or YAML form."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import click

from rune.cli.client import Session, pb2
from rune.cli.commands.common import inst_status, list_instances, pass_session, svc_status
from rune.cli.errors import EXIT_NOT_FOUND, EXIT_UNIMPLEMENTED, EXIT_USAGE, CliError
from rune.cli.output import FORMATS, Column, age, dump, render, table, to_dict

TYPES = {
    "services": "services", "service": "services", "svc": "services",
    "instances": "instances", "instance": "instances", "inst": "instances",
    "namespaces": "namespaces", "namespace": "namespaces", "ns": "namespaces",
    "secrets": "secrets", "secret": "secrets",
    "configmaps": "configmaps", "configmap": "configmaps", "config": "configmaps", "configs": "configmaps",
    "cfg": "configmaps", "cm": "configmaps",
}  # fmt: skip


def _labels(m: Any) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(m.labels.items())) or "-"


def _keys(m: Any) -> str:
    return ",".join(sorted(m.data)) or "-"


def _what(svc: Any) -> str:
    if svc.runtime == "process":
        return " ".join(" ".join([svc.process.command, *svc.process.args]).split())[:50]
    return svc.image or "-"


@dataclass(frozen=True)
class Kind:
    """How to list, show and print one resource type."""

    columns: list[Column]
    wide: list[Column]
    all_ns_column: bool
    created: Callable[[Any], Any]
    status: Callable[[Any], str]


KINDS: dict[str, Kind] = {
    "services": Kind(
        columns=[
            ("NAME", lambda s: s.name),
            ("STATUS", lambda s: svc_status(s.status)),
            ("SCALE", lambda s: str(s.scale)),
            ("RUNTIME", lambda s: s.runtime or "container"),
            ("IMAGE/COMMAND", _what),
            ("GEN", lambda s: str(s.metadata.generation)),
            ("AGE", lambda s: age(s.metadata.created_at)),
        ],
        wide=[
            ("PORTS", lambda s: ",".join(f"{p.name}:{p.port}" for p in s.ports) or "-"),
            ("LABELS", _labels),
            ("DEPENDS", lambda s: ",".join(d.service or d.secret or d.configmap for d in s.dependencies) or "-"),
        ],
        all_ns_column=True,
        created=lambda s: s.metadata.created_at,
        status=lambda s: svc_status(s.status),
    ),
    "instances": Kind(
        columns=[
            ("NAME", lambda i: i.name),
            ("SERVICE", lambda i: i.service_name),
            ("STATUS", lambda i: inst_status(i.status)),
            ("PID", lambda i: str(i.pid) if i.pid else "-"),
            ("RESTARTS", lambda i: str(i.metadata.restart_count)),
            ("AGE", lambda i: age(i.created_at)),
        ],
        wide=[
            ("ID", lambda i: i.id),
            ("NODE", lambda i: i.node_id or "-"),
            ("RUNNER", lambda i: i.runner or "-"),
            ("MESSAGE", lambda i: i.status_message[:60] or "-"),
        ],
        all_ns_column=True,
        created=lambda i: i.created_at,
        status=lambda i: inst_status(i.status),
    ),
    "namespaces": Kind(
        columns=[("NAME", lambda n: n.name), ("LABELS", _labels), ("AGE", lambda n: age(int(n.created_at)))],
        wide=[("DESCRIPTION", lambda n: n.description or "-")],
        all_ns_column=False,
        created=lambda n: n.created_at,
        status=lambda n: "",
    ),
    "secrets": Kind(
        columns=[
            ("NAME", lambda s: s.name),
            ("TYPE", lambda s: s.type or "static"),
            ("KEYS", _keys),
            ("VERSION", lambda s: str(s.version)),
            ("AGE", lambda s: age(s.created_at)),
        ],
        wide=[("UPDATED", lambda s: age(s.updated_at))],
        all_ns_column=True,
        created=lambda s: s.created_at,
        status=lambda s: "",
    ),
    "configmaps": Kind(
        columns=[
            ("NAME", lambda c: c.name),
            ("KEYS", _keys),
            ("VERSION", lambda c: str(c.version)),
            ("AGE", lambda c: age(c.created_at)),
        ],
        wide=[("UPDATED", lambda c: age(c.updated_at))],
        all_ns_column=True,
        created=lambda c: c.created_at,
        status=lambda c: "",
    ),
}


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
        found = [i for i in list_instances(s, ns) if i.name == name]
        if not found:
            raise CliError(f'instance "{name}" not found in namespace "{ns}"', EXIT_NOT_FOUND) from None
        return found[0]
    if kind == "namespaces":
        return s.call("NamespaceService", "GetNamespace", pb2("namespace").GetNamespaceRequest(name=name)).namespace
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


def _sort(items: list[Any], kind: Kind, sort_by: str | None) -> list[Any]:
    if sort_by == "creationTime":
        return sorted(items, key=lambda i: str(kind.created(i)))
    if sort_by == "status":
        return sorted(items, key=lambda i: (kind.status(i), i.name))
    if sort_by == "name":
        return sorted(items, key=lambda i: (getattr(i, "namespace", ""), i.name))
    return items


def _watch_stream(s: Session, kind: str, ns: str, labels: str | None, fields: str | None, since: int) -> Iterator[Any]:
    md = s.metadata()
    if kind == "services":
        req = pb2("service").WatchServicesRequest(
            namespace=ns, label_selector_expr=labels or "", field_selector_expr=fields or "", since_revision=since
        )
        return iter(s.stub("ServiceService").WatchServices(req, metadata=md))
    if kind == "instances":
        req = pb2("instance").WatchInstancesRequest(
            namespace=ns, label_selector_expr=labels or "", field_selector_expr=fields or "", since_revision=since
        )
        return iter(s.stub("InstanceService").WatchInstances(req, metadata=md))
    if kind == "namespaces":
        req = pb2("namespace").WatchNamespacesRequest(
            label_selector=selector_map(labels, "-l"), field_selector=selector_map(fields, "--field-selector"),
            since_revision=since,
        )  # fmt: skip
        return iter(s.stub("NamespaceService").WatchNamespaces(req, metadata=md))
    raise CliError(f"runed has no watch for {kind}", EXIT_UNIMPLEMENTED)


def _resuming(s: Session, kind: str, ns: str, labels: str | None, fields: str | None, since: int) -> Iterator[Any]:
    """Watch events; when runed goes away the watch resumes after the last revision seen (no gaps, no repeats)."""
    import time

    import grpc

    attempts = 0
    while True:
        try:
            for ev in _watch_stream(s, kind, ns, labels, fields, since):
                attempts = 0
                since = getattr(ev, "revision", 0) or since
                yield ev
            return
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE or not since or attempts >= 30:
                raise
            attempts += 1
            sys.stderr.write(f"watch interrupted ({e.code().name}); resuming after revision {since}\n")
            time.sleep(min(2.0, 0.1 * 2**attempts))


def _watch(s: Session, kind_name: str, ns: str, labels: str | None, fields: str | None, since: int, fmt: str) -> None:
    from rune.cli.output import enum_name

    kind = KINDS[kind_name]
    etype = pb2("common").EventType
    cols: list[Column] = list(kind.columns) + (list(kind.wide) if fmt == "wide" else [])
    attr = kind_name[:-1]
    for ev in _resuming(s, kind_name, ns, labels, fields, since):
        obj = getattr(ev, attr)
        event = enum_name(etype, ev.event_type, "EVENT_TYPE_")
        if fmt in ("json", "yaml"):
            dump({"type": event, "object": to_dict(obj)}, "json" if fmt == "json" else "yaml")
            if fmt == "yaml":
                sys.stdout.write("---\n")
        else:
            table([[event] + [fn(obj) for _, fn in cols]], None)
        sys.stdout.flush()


@click.command()
@click.argument("type_name", metavar="TYPE")
@click.argument("name", required=False)
@click.option("-n", "--namespace", help="Namespace (default: the context's, else default).")
@click.option("-A", "--all-namespaces", is_flag=True, help="Every namespace.")
@click.option("-l", "--selector", "labels", help="Label selector, e.g. app=web,tier!=db.")
@click.option("--field-selector", "fields", help="Field selector, e.g. status=Running.")
@click.option("-o", "--output", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("-w", "--watch", is_flag=True, help="After listing, print changes as they happen.")
@click.option("--sort-by", type=click.Choice(["name", "creationTime", "status"]))
@click.option("--no-headers", is_flag=True)
@click.option("--show-labels", is_flag=True, help="Add a LABELS column.")
@click.option("--show-values", is_flag=True, help="Secrets: print values (needs secrets:read).")
@click.option("--limit", "page_size", type=int, default=0, help="Page size used when fetching (all pages are read).")
@click.option("--service-name", "--service", "service", default="", help="Instances: only this service's.")
@pass_session
def get(
    s: Session,
    type_name: str,
    name: str | None,
    namespace: str | None,
    all_namespaces: bool,
    labels: str | None,
    fields: str | None,
    fmt: str,
    watch: bool,
    sort_by: str | None,
    no_headers: bool,
    show_labels: bool,
    show_values: bool,
    page_size: int,
    service: str,
) -> None:
    """List objects of TYPE (services, instances, namespaces, secrets, configmaps), or show NAME."""
    kind_name = TYPES.get(type_name.lower())
    if kind_name is None:
        raise CliError(f"unknown type {type_name!r} (expected one of: {', '.join(KINDS)})", EXIT_USAGE)
    kind = KINDS[kind_name]
    ns = "*" if all_namespaces else s.namespace(namespace)
    if name:
        obj = get_object(s, kind_name, name, s.namespace(namespace), show_values)
        if fmt in ("json", "yaml"):
            dump(to_dict(obj), fmt)
        else:
            render([obj], fmt, kind.columns, kind.wide, no_headers)
        return
    items, rev = list_objects(s, kind_name, ns, labels, fields, page_size, service)
    # Instances come in id order; by name reads better (web-0, web-1, ...).
    items = _sort(items, kind, sort_by or ("name" if kind_name == "instances" else None))
    if kind_name == "secrets" and show_values:
        items = [get_object(s, "secrets", x.name, x.namespace, True) for x in items]
    columns = list(kind.columns)
    if all_namespaces and kind.all_ns_column:
        columns.insert(1, ("NAMESPACE", lambda o: o.namespace))
    if show_labels and kind_name in ("services", "namespaces") and not (fmt == "wide" and kind_name == "services"):
        columns.append(("LABELS", _labels))
    if show_values and kind_name == "secrets" and fmt in ("table", "wide"):
        columns.append(("DATA", lambda o: ",".join(f"{k}={v}" for k, v in sorted(o.data.items()))))
    if not items and fmt in ("table", "wide") and not watch:
        where = "any namespace" if ns == "*" else f'namespace "{ns}"'
        sys.stderr.write(f"No {kind_name} found in {where}.\n")
    else:
        render(items, fmt, columns, kind.wide, no_headers, list_key=kind_name)
    if watch:
        sys.stdout.flush()
        _watch(s, kind_name, ns, labels, fields, rev, fmt)


def _describe_service(s: Session, svc: Any) -> None:
    import grpc

    d = to_dict(svc)
    for key in ("id", "status", "metadata"):
        d.pop(key, None)
    click.echo(f"Name:        {svc.name}")
    click.echo(f"Namespace:   {svc.namespace}")
    click.echo(f"ID:          {svc.id}")
    click.echo(f"Status:      {svc_status(svc.status)}")
    created = svc.metadata.created_at
    click.echo(f"Generation:  {svc.metadata.generation}   Created: {created} ({age(created)} ago)")
    click.echo("Spec:")
    import yaml

    click.echo("  " + yaml.safe_dump(d, sort_keys=False).replace("\n", "\n  ").rstrip())
    insts = list_instances(s, svc.namespace, svc.name)
    click.echo("Instances:")
    if insts:
        rows = [
            [i.name, inst_status(i.status), str(i.pid or "-"), str(i.metadata.restart_count), age(i.created_at),
             i.status_message or "-"]
            for i in sorted(insts, key=lambda i: i.name)
        ]  # fmt: skip
        table([["  " + r[0], *r[1:]] for r in rows], ["  NAME", "STATUS", "PID", "RESTARTS", "AGE", "MESSAGE"])
    else:
        click.echo("  <none>")
    if s.has_rpc("ServiceService", "ListServiceRevisions"):
        try:
            req = pb2("service").ListServiceRevisionsRequest(name=svc.name, namespace=svc.namespace)
            revs = s.call("ServiceService", "ListServiceRevisions", req).revisions[:5]
            click.echo("Recent revisions:")
            for r in revs:
                cause = r.change_cause or ("rollback to " + str(r.rollback_of) if r.rollback_of else "-")
                click.echo(f"  {r.revision:<6} gen {r.generation:<4} {r.created_at}  {r.created_by or '-'}  {cause}")
        except grpc.RpcError:
            pass
    _events(s, svc.namespace, svc.name)


def _events(s: Session, ns: str, name: str) -> None:
    """Recent audited events about the object (only shown when the caller may read the audit log)."""
    import grpc

    if not s.has_rpc("AdminService", "ListAuditEvents"):
        return
    try:
        resp = s.call("AdminService", "ListAuditEvents", pb2("admin").ListAuditEventsRequest(limit=1000))
    except grpc.RpcError:
        return
    evs = [e for e in resp.events if e.name == name and (e.namespace in ("", ns))][-10:]
    click.echo("Events:")
    if not evs:
        click.echo("  <none>")
    from datetime import UTC, datetime

    for e in evs:
        when = datetime.fromtimestamp(e.timestamp_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        click.echo(f"  {when}  {e.method.rsplit('/', 1)[-1]:<18} {e.outcome:<8} {e.subject}")


@click.command()
@click.argument("type_name", metavar="TYPE")
@click.argument("name")
@click.option("-n", "--namespace")
@click.option("--show-values", is_flag=True, help="Secrets: print values (needs secrets:read).")
@pass_session
def describe(s: Session, type_name: str, name: str, namespace: str | None, show_values: bool) -> None:
    """Show one object in full: spec, status, instances, revisions and recent events."""
    import yaml

    kind_name = TYPES.get(type_name.lower())
    if kind_name is None:
        raise CliError(f"unknown type {type_name!r} (expected one of: {', '.join(KINDS)})", EXIT_USAGE)
    ns = s.namespace(namespace)
    obj = get_object(s, kind_name, name, ns, show_values)
    if kind_name == "services":
        _describe_service(s, obj)
        return
    d = to_dict(obj)
    if kind_name == "secrets" and not show_values:
        d["data"] = {k: "<hidden: use --show-values>" for k in obj.data}
    if kind_name == "instances":
        d["status"] = inst_status(obj.status)
        d.pop("environment", None)
    click.echo(yaml.safe_dump(d, sort_keys=False).rstrip())
    if kind_name in ("instances", "secrets", "configmaps"):
        _events(s, ns, obj.name)
