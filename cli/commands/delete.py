"""``rune delete`` (aliases ``remove``, ``rm``): delete services (waiting for their cleanup) and other objects."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import click

from rune.cli.client import Session, pb2
from rune.cli.commands.common import pass_session
from rune.cli.complete import delete_args
from rune.cli.errors import EXIT_ERROR, EXIT_TIMEOUT, CliError, render_rpc_error
from rune.cli.output import age, dump, table, to_dict

_KINDS = {
    "service": "service", "services": "service", "svc": "service",
    "secret": "secret", "secrets": "secret",
    "configmap": "configmap", "configmaps": "configmap", "config": "configmap", "cm": "configmap",
    "namespace": "namespace", "namespaces": "namespace", "ns": "namespace",
    "node": "node", "nodes": "node", "no": "node",
}  # fmt: skip
_FINAL = ("completed", "failed")


def _op_row(op: Any) -> list[str]:
    end = age(op.end_time) if op.end_time else "-"
    return [op.id, op.namespace, op.service_name, op.status, f"{op.deleted_instances}/{op.total_instances}", end]


def _wait_deletion(s: Session, ns: str, op_id: str, timeout: float) -> Any:
    svpb = pb2("service")
    deadline = time.monotonic() + timeout
    while True:
        op = s.call(
            "ServiceService", "GetDeletionStatus", svpb.GetDeletionStatusRequest(namespace=ns, name=op_id)
        ).operation
        if op.status in _FINAL:
            return op
        if time.monotonic() > deadline:
            raise CliError(
                f"timed out waiting for deletion {op_id} (status {op.status}); see `rune delete status {op_id}`",
                EXIT_TIMEOUT,
            )
        time.sleep(0.2)


class _DeleteGroup(click.Group):
    """``delete NAME`` / ``delete TYPE NAME`` as well as the ``list`` and ``status`` subcommands."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        first = next((a for a in args if not a.startswith("-")), None)
        if first is not None and first not in self.commands and not {"-h", "--help"} & set(args):
            args = ["object", *args]
        return super().parse_args(ctx, args)

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[Any]:
        # ``delete <TAB>``: the service names (NAME alone is a service) beside the subcommands.
        return [*super().shell_complete(ctx, incomplete), *delete_args(ctx, self, incomplete)]

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, "[OPTIONS] [TYPE] NAME [NAME...]")

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # The flags that matter are the hidden ``object`` command's: list them as delete's own.
        target = self.commands["object"]
        params = [p for p in target.get_params(ctx) if isinstance(p, click.Option)]
        rows = [r for p in params if (r := p.get_help_record(ctx)) is not None]
        with formatter.section("Options"):
            formatter.write_dl(rows)
        self.format_commands(ctx, formatter)


@click.group(cls=_DeleteGroup)
def delete() -> None:
    """Delete [TYPE] NAME... (TYPE: service (default), secret, configmap, namespace, node); `list`, `status ID`."""


@delete.command("object", hidden=True)
@click.argument("args", nargs=-1, required=True, shell_complete=delete_args)
@click.option("-n", "--namespace", help="Namespace (default: the context's, else default).")
@click.option(
    "-f", "--force", is_flag=True, help="Delete even if other services depend on it; a namespace with everything in it."
)
@click.option("--no-dependencies", is_flag=True, help="Same as --force.")
@click.option("-t", "--timeout", default=60, show_default=True, type=int, help="Seconds to wait for cleanup.")
@click.option("--detach", is_flag=True, help="Return once deletion has started.")
@click.option("--dry-run", is_flag=True, help="Say what would happen without deleting.")
@click.option("--grace-period", type=int, default=0, help="Seconds instances get to stop.")
@click.option("--now", is_flag=True, help="No grace period.")
@click.option("--ignore-not-found", is_flag=True, help="A missing object is not an error.")
@click.option("--finalizers", multiple=True, hidden=True)
@click.option("-o", "--output", "fmt", type=click.Choice(["text", "json", "yaml"]), default="text", help="Output.")
@pass_session
def delete_object(
    s: Session, args: tuple[str, ...], namespace: str | None, force: bool, no_dependencies: bool, timeout: int,
    detach: bool, dry_run: bool, grace_period: int, now: bool, ignore_not_found: bool, finalizers: tuple[str, ...],
    fmt: str,
) -> None:  # fmt: skip
    if len(args) > 1 and args[0].lower() in _KINDS:
        kind, names = _KINDS[args[0].lower()], list(args[1:])
    else:
        kind, names = "service", list(args)
    ns = s.namespace(namespace)
    flags = _Flags(force, no_dependencies, timeout, detach, dry_run, grace_period, now, ignore_not_found, finalizers)
    # -o json|yaml: one document for the command, printed once every name is done (the failures
    # said on stderr meanwhile): a name's own, or {"items": [...]} for several.
    docs: list[dict[str, Any]] = []
    try:
        _delete_names(s, kind, names, ns, fmt, flags, docs)
    finally:
        if fmt != "text" and docs:
            dump(docs[0] if len(names) == 1 else {"items": docs}, fmt)


def _delete_names(
    s: Session, kind: str, names: list[str], ns: str, fmt: str, flags: _Flags, docs: list[dict[str, Any]]
) -> None:
    if len(names) == 1:
        # One name: its failure is the command's, with its own exit code.
        _delete_one(s, kind, names[0], ns, fmt, flags, docs)
        return
    # Several: each is deleted, a failure said and the rest still done; the command fails with the
    # first failure's exit code. The services' deletions are all started, then waited for.
    import grpc

    started: list[tuple[str, str, dict[str, Any] | None]] = []
    failures: list[int] = []
    for name in names:
        try:
            if flags.detach:
                _delete_one(s, kind, name, ns, fmt, flags, docs)
            else:
                _delete_one(s, kind, name, ns, fmt, dataclasses.replace(flags, detach=True), docs, started=started)
        except (CliError, grpc.RpcError) as e:
            failures.append(_say_failure(s, kind, name, e))
    for name, deletion_id, doc in started:
        try:
            _finish(s, ns, name, deletion_id, float(flags.timeout), fmt, doc)
        except CliError as e:
            failures.append(_say_failure(s, kind, name, e))
    if failures:
        raise CliError(f"{len(failures)} of {len(names)} deletions failed", failures[0])


@dataclasses.dataclass(frozen=True)
class _Flags:
    force: bool
    no_dependencies: bool
    timeout: int
    detach: bool
    dry_run: bool
    grace_period: int
    now: bool
    ignore_not_found: bool
    finalizers: tuple[str, ...]


def _say_failure(s: Session, kind: str, name: str, e: Exception) -> int:
    """Print one name's failure as the command's own would be printed; its exit code."""
    if isinstance(e, CliError):
        message, code = str(e), e.code
    else:
        message, code = render_rpc_error(e, str(s.target))
    click.echo(f"error: {kind}/{name}: {message}", err=True)
    return code


def _doc(kind: str, name: str, ns: str, resp: Any = None, **more: Any) -> dict[str, Any]:
    """A name's -o json|yaml document: which object, then the server's answer (its fields as the
    API names them) and what more the command learnt."""
    out: dict[str, Any] = {"kind": kind, "name": name}
    if kind not in ("namespace", "node"):
        out["namespace"] = ns
    if resp is not None:
        out.update(to_dict(resp))
    out.update(more)
    return out


def _delete_one(
    s: Session,
    kind: str,
    name: str,
    ns: str,
    fmt: str,
    f: _Flags,
    docs: list[dict[str, Any]],
    *,
    started: list[tuple[str, str, dict[str, Any] | None]] | None = None,
) -> None:
    """Delete one object, its document (-o json|yaml) added to ``docs``. With ``f.detach`` a
    service's deletion is only started: said, or, with ``started``, added to it as (name, deletion
    id, document) for the caller to wait for."""
    if kind != "service":
        _delete_other(s, kind, name, ns, f.ignore_not_found, f.force, fmt, docs)
        return
    req = pb2("service").DeleteServiceRequest(
        name=name, namespace=ns, force=f.force or f.no_dependencies, timeout_seconds=f.timeout, detach=f.detach,
        dry_run=f.dry_run, grace_period=f.grace_period, now=f.now, ignore_not_found=f.ignore_not_found,
        finalizers=list(f.finalizers), no_dependencies=f.no_dependencies,
    )  # fmt: skip
    resp = s.call("ServiceService", "DeleteService", req)
    for w in resp.warnings:
        click.echo(f"warning: {w}", err=True)
    doc = None
    if fmt != "text":
        doc = _doc(kind, name, ns, resp)
        docs.append(doc)
    if resp.errors:
        raise CliError("; ".join(resp.errors), EXIT_ERROR)
    if f.dry_run:
        if fmt == "text":
            click.echo(f"service/{name} would be deleted (dry run)")
        return
    if not resp.deletion_id:
        if fmt == "text":
            click.echo(f"service/{name} not found (ignored)")
        return
    if f.detach and started is not None:
        started.append((name, resp.deletion_id, doc))
    elif f.detach:
        if fmt == "text":
            click.echo(
                f"service/{name} deletion started: {resp.deletion_id} (see `rune delete status {resp.deletion_id}`)"
            )
    else:
        _finish(s, ns, name, resp.deletion_id, float(f.timeout), fmt, doc)


def _finish(
    s: Session, ns: str, name: str, deletion_id: str, timeout: float, fmt: str, doc: dict[str, Any] | None
) -> None:
    """Wait for a service's deletion, and say how it ended (in ``doc``, as its ``operation``, for -o json|yaml)."""
    op = _wait_deletion(s, ns, deletion_id, timeout)
    if doc is not None:
        doc["operation"] = to_dict(op)
    if op.status == "failed":
        raise CliError(f"deletion of service/{name} failed: {op.failure_reason}")
    if fmt == "text":
        click.echo(f"service/{name} deleted ({op.deleted_instances} instance(s) removed)")


def _delete_other(
    s: Session, kind: str, name: str, ns: str, ignore_not_found: bool, force: bool, fmt: str, docs: list[dict[str, Any]]
) -> None:
    import grpc

    try:
        if kind == "secret":
            resp = s.call("SecretService", "DeleteSecret", pb2("secret").DeleteSecretRequest(name=name, namespace=ns))
        elif kind == "configmap":
            resp = s.call(
                "ConfigmapService", "DeleteConfigmap", pb2("configmap").DeleteConfigmapRequest(name=name, namespace=ns)
            )
        elif kind == "node":
            resp = s.call("NodeService", "DeleteNode", pb2("node").NodeActionRequest(id=name))
        else:
            req = pb2("namespace").DeleteNamespaceRequest(name=name, ignore_not_found=ignore_not_found, force=force)
            resp = s.call("NamespaceService", "DeleteNamespace", req)
    except grpc.RpcError as e:
        if ignore_not_found and e.code() == grpc.StatusCode.NOT_FOUND:
            if fmt == "text":
                click.echo(f"{kind}/{name} not found (ignored)")
            else:
                docs.append(_doc(kind, name, ns, notFound=True))
            return
        raise
    if fmt != "text":
        docs.append(_doc(kind, name, ns, resp))
    elif kind == "node":
        click.echo(f"node/{name} deleted ({resp.status.message})")
    else:
        click.echo(f"{kind}/{name} deleted")


@delete.command("list")
@click.option("-n", "--namespace", default=None)
@click.option("-A", "--all-namespaces", is_flag=True)
@click.option("-s", "--status", default="", help="Only operations in this status.")
@click.option("-o", "--output", "fmt", type=click.Choice(["table", "json", "yaml"]), default="table")
@pass_session
def delete_list(s: Session, namespace: str | None, all_namespaces: bool, status: str, fmt: str) -> None:
    """List deletion operations."""
    ns = "*" if all_namespaces else (namespace or s.namespace_flag or "")
    req = pb2("service").ListDeletionOperationsRequest(namespace=ns, status=status)
    ops = s.call("ServiceService", "ListDeletionOperations", req).operations
    if fmt != "table":
        dump({"operations": [to_dict(o) for o in ops]}, fmt)
        return
    table([_op_row(o) for o in ops], ["ID", "NAMESPACE", "SERVICE", "STATUS", "DELETED", "ENDED"])


@delete.command("status")
@click.argument("deletion_id")
@click.option("-n", "--namespace")
@click.option("-o", "--output", "fmt", type=click.Choice(["text", "json", "yaml"]), default="text")
@pass_session
def delete_status(s: Session, deletion_id: str, namespace: str | None, fmt: str) -> None:
    """Show one deletion operation and its finalizers."""
    req = pb2("service").GetDeletionStatusRequest(namespace=namespace or "", name=deletion_id)
    op = s.call("ServiceService", "GetDeletionStatus", req).operation
    if fmt != "text":
        dump(to_dict(op), fmt)
        return
    click.echo(f"Deletion:   {op.id}\nService:    {op.namespace}/{op.service_name}\nStatus:     {op.status}")
    click.echo(f"Instances:  {op.deleted_instances}/{op.total_instances} deleted, {op.failed_instances} failed")
    if op.failure_reason:
        click.echo(f"Failure:    {op.failure_reason}")
    for f in op.finalizers:
        click.echo(f"  finalizer {f.type or f.name or f.id}: {f.status}{' - ' + f.error if f.error else ''}")
