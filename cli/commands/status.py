"""``rune status``, ``rune health`` and ``rune version``."""

from __future__ import annotations

import sys
from collections import Counter

import click

from rune.cli.client import Session, pb2
from rune.cli.commands.common import list_instances, pass_session, svc_status
from rune.cli.output import dump, enum_name, table, to_dict


@click.command()
@click.option("-n", "--namespace")
@click.option("-A", "--all-namespaces", is_flag=True)
@pass_session
def status(s: Session, namespace: str | None, all_namespaces: bool) -> None:
    """Per-namespace summary: services by status and instances running/total."""
    from rune.cli.commands.objects import list_objects

    ns = "*" if all_namespaces or not (namespace or s.context.get("defaultNamespace")) else s.namespace(namespace)
    services, _ = list_objects(s, "services", ns, None, None, 0)
    instances = list_instances(s, ns)
    ipb = pb2("instance")
    rows = []
    for name in sorted({x.namespace for x in services} | {i.namespace for i in instances}):
        svcs = [x for x in services if x.namespace == name]
        insts = [i for i in instances if i.namespace == name]
        by_status = Counter(svc_status(x.status) for x in svcs)
        running = sum(1 for i in insts if i.status == ipb.INSTANCE_STATUS_RUNNING)
        rows.append(
            [
                name,
                str(len(svcs)),
                ", ".join(f"{k} {v}" for k, v in sorted(by_status.items())) or "-",
                f"{running}/{len(insts)}",
            ]
        )
    click.echo(f"runed at {s.target}")
    if rows:
        table(rows, ["NAMESPACE", "SERVICES", "BY STATUS", "INSTANCES RUNNING"])
    else:
        click.echo("no services")


@click.command()
@click.argument("target", required=False, default="")
@click.argument("name", required=False, default="")
@click.option("-n", "--namespace")
@click.option("--checks", is_flag=True, help="Include probe/check results.")
@click.option("-o", "--output", "fmt", type=click.Choice(["table", "json", "yaml"]), default="table")
@pass_session
def health(s: Session, target: str, name: str, namespace: str | None, checks: bool, fmt: str) -> None:
    """Health of the API server (default), service/svc, instance/inst or node [NAME]."""
    hpb = pb2("health")
    component = {"svc": "service", "inst": "instance", "services": "service", "instances": "instance"}.get(
        target, target
    )
    req = hpb.GetHealthRequest(
        component_type=component, name=name, namespace=s.namespace(namespace), include_checks=checks
    )
    resp = s.call("HealthService", "GetHealth", req)
    if fmt != "table":
        dump(to_dict(resp), fmt)
        return
    rows = []
    for c in resp.components:
        rows.append([c.component_type, c.name, enum_name(hpb.HealthStatus, c.status, "HEALTH_STATUS_"), c.message])
        for r in c.check_results:
            kind = enum_name(hpb.HealthCheckType, r.type, "HEALTH_CHECK_TYPE_")
            rows.append(["", f"  {kind}", enum_name(hpb.HealthStatus, r.status, "HEALTH_STATUS_"), r.message])
    table(rows, ["TYPE", "NAME", "STATUS", "MESSAGE"])
    unhealthy = [c for c in resp.components if c.status == hpb.HEALTH_STATUS_UNHEALTHY]
    if unhealthy:
        sys.exit(1)


@click.command()
@click.option("--client", "client_only", is_flag=True, help="Only the client version (no server call).")
@click.option("-o", "--output", "fmt", type=click.Choice(["text", "json", "yaml"]), default="text")
@pass_session
def version(s: Session, client_only: bool, fmt: str) -> None:
    """Client and server versions."""
    import platform
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        client = dist_version("runed")
    except PackageNotFoundError:
        client = "unknown"
    data: dict[str, str] = {"client": client, "python": platform.python_version()}
    if not client_only:
        hpb = pb2("health")
        resp = s.call("HealthService", "GetHealth", hpb.GetHealthRequest())
        # Servers older than GetHealthResponse.server_version leave it empty.
        server = resp.server_version or "unknown (not reported)"
        data |= {"server": server, "serverAddress": s.target}
    if fmt != "text":
        dump(data, fmt)
        return
    click.echo(f"Client: rune {data['client']} (python {data['python']})")
    if "server" in data:
        click.echo(f"Server: runed {data['server']} at {data['serverAddress']}")
