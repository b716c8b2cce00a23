"""``rune scale|stop|restart|rollback|history``: change a service's scale or spec revision and watch it converge."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

from rune.cli.client import Session, pb2
from rune.cli.commands.common import inst_status, list_instances, pass_session, seconds
from rune.cli.complete import names_of
from rune.cli.errors import EXIT_TIMEOUT, CliError, exit_code_for
from rune.cli.output import age, dump, table, to_dict


def watch_scaling(s: Session, name: str, ns: str, target: int, timeout: float) -> None:
    """Follow WatchScaling with a progress bar until the service reaches ``target``."""
    import grpc
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn

    svpb = pb2("service")
    console = Console(stderr=True)
    req = svpb.WatchScalingRequest(service_name=name, namespace=ns, target_scale=target)
    call = s.stub("ServiceService").WatchScaling(req, metadata=s.metadata(), timeout=timeout)
    total = max(target, 1)
    last: Any = None
    with Progress(
        TextColumn(f"scaling {name} to {target}"),
        BarColumn(),
        TextColumn("{task.fields[detail]}"),
        console=console,
        transient=not console.is_terminal,
    ) as progress:
        task = progress.add_task("scale", total=total, detail="")
        try:
            for st in call:
                last = st
                done = (
                    st.running_instances if target > 0 else max(0, total - st.running_instances - st.pending_instances)
                )
                detail = f"running {st.running_instances}, pending {st.pending_instances}, scale {st.current_scale}"
                progress.update(task, completed=min(done, total), detail=detail)
                if st.complete:
                    progress.update(task, completed=total)
                    break
                if st.status.code:
                    # The server ends the stream when the target cannot be reached (an instance failed
                    # for good, the operation was cancelled): say why, with the status code's exit code.
                    raise CliError(f"scaling {name} failed: {st.status.message}", _exit_code(st.status.code))
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise CliError(
                    f"timed out after {timeout:g}s waiting for {name} to reach scale {target}", EXIT_TIMEOUT
                ) from e
            raise
        finally:
            call.cancel()
    running = last.running_instances if last is not None else 0
    if last is not None and last.complete and running < target:
        # A job: its instances ran to completion and stay stopped.
        click.echo(f"service/{name} scaled to {target}: {last.status.message}")
        return
    click.echo(f"service/{name} scaled to {target} ({running} running)")


def _exit_code(code: int) -> int:
    """The CLI's exit code for a google.rpc status code number (a stream's own status, not an RPC error)."""
    import grpc

    names = {c.value[0]: c.name for c in grpc.StatusCode}
    return exit_code_for(names.get(code, "UNKNOWN"))


def _scale(s: Session, name: str, ns: str, n: int, mode: str, step: int, interval: float) -> Any:
    svpb = pb2("service")
    req = svpb.ScaleServiceRequest(
        name=name,
        namespace=ns,
        scale=n,
        mode=svpb.SCALING_MODE_GRADUAL if mode == "gradual" else svpb.SCALING_MODE_IMMEDIATE,
        step_size=step,
        interval_seconds=int(interval),
    )
    return s.call("ServiceService", "ScaleService", req)


wait_options = [
    click.option("--wait/--no-wait", default=True, help="Wait for the change to converge."),
    click.option("--timeout", default="5m", show_default=True),
    click.option("-n", "--namespace"),
]


F = TypeVar("F", bound=Callable[..., Any])


def _with(opts: list[Any]) -> Callable[[F], F]:
    def deco(f: F) -> F:
        for o in reversed(opts):
            f = o(f)
        return f

    return deco


@click.command()
@click.argument("service", shell_complete=names_of("services"))
@click.argument("replicas", type=click.IntRange(min=0))
@click.option("--mode", type=click.Choice(["immediate", "gradual"]), default="immediate")
@click.option("--step", type=int, default=1, help="Gradual mode: instances per step.")
@click.option("--interval", default="30s", help="Gradual mode: time between steps.")
@click.option("--rollback-on-fail", is_flag=True, help="If the new scale fails or times out, go back to the old one.")
@_with(wait_options)
@pass_session
def scale(
    s: Session, service: str, replicas: int, mode: str, step: int, interval: str, rollback_on_fail: bool, wait: bool,
    timeout: str, namespace: str | None,
) -> None:  # fmt: skip
    """Set SERVICE's scale to REPLICAS and show progress until it is reached."""
    ns = s.namespace(namespace)
    before = 0
    if rollback_on_fail:
        svpb = pb2("service")
        before = s.call(
            "ServiceService", "GetService", svpb.GetServiceRequest(name=service, namespace=ns)
        ).service.scale
    resp = _scale(s, service, ns, replicas, mode, step, seconds(interval, "--interval"))
    if resp.status.message:
        click.echo(resp.status.message)
    if not wait and not rollback_on_fail:
        return
    try:
        watch_scaling(s, service, ns, replicas, seconds(timeout, "--timeout"))
    except CliError as e:
        if not rollback_on_fail or before == replicas:
            raise
        # Back to the scale that worked; the error still decides the exit status.
        _scale(s, service, ns, before, "immediate", 1, 0)
        click.echo(f"error: {e.message}", err=True)
        click.echo(f"service/{service} rolled back to scale {before}", err=True)
        watch_scaling(s, service, ns, before, seconds(timeout, "--timeout"))
        raise CliError(f"scaling {service} to {replicas} failed; rolled back to {before}", e.code) from e


@click.command()
@click.argument("service", shell_complete=names_of("services"))
@_with(wait_options)
@pass_session
def stop(s: Session, service: str, wait: bool, timeout: str, namespace: str | None) -> None:
    """Scale SERVICE to zero (rune restart or rune scale brings it back)."""
    ns = s.namespace(namespace)
    _scale(s, service, ns, 0, "immediate", 1, 0)
    if wait:
        watch_scaling(s, service, ns, 0, seconds(timeout, "--timeout"))
    else:
        click.echo(f"service/{service} stopping")


@click.command()
@click.argument("service", shell_complete=names_of("services"))
@_with(wait_options)
@pass_session
def restart(s: Session, service: str, wait: bool, timeout: str, namespace: str | None) -> None:
    """Restart every instance of SERVICE one by one; a stopped service comes back at its last scale."""
    ns = s.namespace(namespace)
    svpb, ipb = pb2("service"), pb2("instance")
    svc = s.call("ServiceService", "GetService", svpb.GetServiceRequest(name=service, namespace=ns)).service
    if svc.scale == 0:
        target = max(svc.metadata.last_non_zero_scale, 1)
        _scale(s, service, ns, target, "immediate", 1, 0)
        if wait:
            watch_scaling(s, service, ns, target, seconds(timeout, "--timeout"))
        return
    deadline = time.monotonic() + seconds(timeout, "--timeout")
    for inst in sorted(list_instances(s, ns, service), key=lambda i: i.name):
        s.call("InstanceService", "RestartInstance", ipb.InstanceActionRequest(id=inst.id, namespace=ns))
        if not wait:
            click.echo(f"instance/{inst.name} restart requested")
            continue
        # Rolling: the next instance restarts once this one runs again (a new process) and is ready.
        while not _restarted_and_ready(s, ns, service, inst):
            if time.monotonic() > deadline:
                cur = [i for i in list_instances(s, ns, service) if i.id == inst.id]
                state = inst_status(cur[0].status) if cur else "missing"
                raise CliError(
                    f"timed out waiting for {inst.name} to run again and be ready (now {state})", EXIT_TIMEOUT
                )
            time.sleep(0.2)
        click.echo(f"instance/{inst.name} restarted")


def _restarted_and_ready(s: Session, ns: str, service: str, before: Any) -> bool:
    from rune.cli.commands.kinds import ready_instances

    ipb = pb2("instance")
    cur = [i for i in list_instances(s, ns, service) if i.id == before.id]
    if not cur or cur[0].status != ipb.INSTANCE_STATUS_RUNNING:
        return False
    now = cur[0]
    if not (now.pid and now.pid != before.pid) and now.metadata.restart_count <= before.metadata.restart_count:
        return False  # the restart has not happened yet: still the old process
    ready = ready_instances(s, ns, before.id)
    return ready is None or before.id in ready


@click.command()
@click.argument("service", shell_complete=names_of("services"))
@click.option("--to-revision", type=int, default=0, help="Revision to restore (default: the previous one).")
@click.option("--change-cause", default="", help="Recorded in the history.")
@_with(wait_options)
@pass_session
def rollback(
    s: Session, service: str, to_revision: int, change_cause: str, wait: bool, timeout: str, namespace: str | None
) -> None:
    """Restore an earlier spec of SERVICE (itself recorded as a new revision)."""
    from rune.cli.commands.cast import wait_ready

    ns = s.namespace(namespace)
    req = pb2("service").RollbackServiceRequest(
        name=service, namespace=ns, to_revision=to_revision, change_cause=change_cause
    )
    resp = s.call("ServiceService", "RollbackService", req)
    # The server says what happened: rolled back, or already at that spec (a scale is not rolled back).
    said = resp.status.message or "rolled back"
    click.echo(f"service/{service}: {said} (generation {resp.service.metadata.generation})")
    if wait:
        wait_ready(s, [(ns, service, resp.service.scale)], seconds(timeout, "--timeout"))


@click.command()
@click.argument("service", shell_complete=names_of("services"))
@click.option("-n", "--namespace")
@click.option("-o", "--output", "fmt", type=click.Choice(["table", "json", "yaml"]), default="table")
@click.option("--revision", type=int, default=0, help="Show this revision's full spec.")
@pass_session
def history(s: Session, service: str, namespace: str | None, fmt: str, revision: int) -> None:
    """List SERVICE's revisions, newest first."""
    ns = s.namespace(namespace)
    req = pb2("service").ListServiceRevisionsRequest(name=service, namespace=ns)
    revs = list(s.call("ServiceService", "ListServiceRevisions", req).revisions)
    if revision:
        revs = [r for r in revs if r.revision == revision]
        if not revs:
            raise CliError(f"service {service} has no revision {revision}", 3)
        dump(to_dict(revs[0]), "json" if fmt == "json" else "yaml")
        return
    if fmt != "table":
        dump({"revisions": [to_dict(r) for r in revs]}, fmt)
        return
    rows = [
        [
            str(r.revision),
            str(r.generation),
            age(r.created_at),
            r.created_by or "-",
            f"rollback to {r.rollback_of}" if r.rollback_of else (r.change_cause or "-"),
        ]
        for r in revs
    ]
    table(rows, ["REVISION", "GEN", "AGE", "BY", "CHANGE-CAUSE"])
