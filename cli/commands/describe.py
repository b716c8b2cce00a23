"""``rune describe``: one object in full, with a service's instances and revisions, its last events and API calls."""

from __future__ import annotations

from typing import Any

import click

from rune.cli.client import Session, pb2
from rune.cli.commands import kinds
from rune.cli.commands.common import inst_status, list_instances, pass_session, svc_status
from rune.cli.commands.events import recent_events
from rune.cli.commands.objects import get_object
from rune.cli.complete import name_by_type
from rune.cli.output import age, table, to_dict


def _describe_service(s: Session, svc: Any) -> None:
    import grpc

    d = to_dict(svc)
    for key in ("id", "status", "statusMessage", "metadata"):
        d.pop(key, None)
    click.echo(f"Name:        {svc.name}")
    click.echo(f"Namespace:   {svc.namespace}")
    click.echo(f"ID:          {svc.id}")
    click.echo(f"Status:      {svc_status(svc.status)}")
    if svc.status_message:
        click.echo(f"Message:     {svc.status_message}")
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
             kinds.ports_text(i), i.status_message or "-"]
            for i in sorted(insts, key=lambda i: i.name)
        ]  # fmt: skip
        headers = ["  NAME", "STATUS", "PID", "RESTARTS", "AGE", "PORTS", "MESSAGE"]
        table([["  " + r[0], *r[1:]] for r in rows], headers)
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
    _lifecycle(s, svc.namespace, f"service/{svc.name}")
    _calls(s, svc.namespace, svc.name)


# Lifecycle events and audited calls shown (the most recent).
RECENT = 10


def _lifecycle(s: Session, ns: str, target: str) -> None:
    """The target's last lifecycle events (started, exited, back-off, probes), as ``rune events``
    prints them: what went wrong with a crashing instance (only shown when the caller may read logs)."""
    import grpc

    try:
        evs = recent_events(s, ns, target, RECENT)
    except grpc.RpcError:
        return
    click.echo("Events:")
    if not evs:
        click.echo("  <none>")
    for e in evs:
        click.echo(f"  {e.timestamp or '-'}  {e.instance_name or '-'}  {e.content.rstrip()}")


def _calls(s: Session, ns: str, name: str) -> None:
    """Recent audited API calls about the object (only shown when the caller may read the audit log)."""
    import grpc

    if not s.has_rpc("AdminService", "ListAuditEvents"):
        return
    try:
        resp = s.call("AdminService", "ListAuditEvents", pb2("admin").ListAuditEventsRequest(limit=1000))
    except grpc.RpcError:
        return
    evs = [e for e in resp.events if e.name == name and (e.namespace in ("", ns))][-RECENT:]
    click.echo("API calls:")
    if not evs:
        click.echo("  <none>")
    from datetime import UTC, datetime

    for e in evs:
        when = datetime.fromtimestamp(e.timestamp_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        click.echo(f"  {when}  {e.method.rsplit('/', 1)[-1]:<18} {e.outcome:<8} {e.subject}")


@click.command()
@click.argument("type_name", metavar="TYPE")
@click.argument("name", shell_complete=name_by_type("type_name"))
@click.option("-n", "--namespace")
@click.option("--show-values", is_flag=True, help="Secrets: print values (needs secrets:read).")
@pass_session
def describe(s: Session, type_name: str, name: str, namespace: str | None, show_values: bool) -> None:
    """Show one object in full: spec, status, instances, revisions, recent events and API calls."""
    import yaml

    kind_name = kinds.resolve(type_name)
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
        d["hostPorts"] = kinds.host_ports(obj)
        d.pop("environment", None)
    click.echo(yaml.safe_dump(d, sort_keys=False).rstrip())
    if kind_name == "instances":
        _lifecycle(s, ns, f"instance/{obj.id}")
    if kind_name in ("instances", "secrets", "configmaps"):
        _calls(s, ns, obj.name)
