"""``rune cast`` (alias ``apply``) and ``rune lint``: read cast files and runesets, apply them, wait for readiness."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import click

from rune.cli.castfile import Cast, CastErrors, collect_files, dependency_cycles, parse_files, parse_text
from rune.cli.client import Session, pb2
from rune.cli.commands.common import (
    instance_health,
    list_instances,
    not_ready_reason,
    pass_session,
    seconds,
    svc_status,
)
from rune.cli.errors import EXIT_INVALID, EXIT_PRECONDITION, EXIT_TIMEOUT, CliError, field_violations
from rune.cli.runeset import extract, is_archive, is_runeset, render


def load_cast(
    paths: tuple[str, ...],
    namespace: str | None,
    recursive: bool,
    values: tuple[str, ...],
    sets: tuple[str, ...],
    release: str = "",
) -> tuple[Cast, list[tuple[str, str]]]:
    """Parse files, directories and runesets; also return the rendered texts of runesets."""
    cast, problems, rendered_texts = Cast(), [], []
    plain: list[str] = []
    for raw in paths:
        p = Path(raw)
        if is_archive(p):
            p = extract(p)
        if is_runeset(p):
            manifest, rendered = render(p, list(values), list(sets), release, namespace or "")
            ns = namespace or manifest.get("namespace")
            for r in rendered:
                rendered_texts.append((str(r.path), r.text))
                try:
                    cast.extend(parse_text(r.text, str(r.path), ns))
                except CastErrors as e:
                    problems += e.problems
        else:
            plain.append(raw)
    try:
        cast.extend(parse_files(collect_files(plain, recursive), namespace))
    except CastErrors as e:
        problems += e.problems
    problems += cast.duplicates()
    if problems:
        raise CastErrors(problems)
    return cast, rendered_texts


def _changed_fields(desired: Any, current: Any) -> list[str]:
    """Top-level fields that ``desired`` sets and ``current`` holds differently (scalars with old -> new)."""
    out = []
    for fd, value in desired.ListFields():
        old = getattr(current, fd.name)
        if old == value:
            continue
        repeated = fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED
        if not repeated and fd.message_type is None:
            out.append(f"{fd.name} {old!r} -> {value!r}")
        else:
            out.append(fd.name)
    return out


def _existing(s: Session, service: str, method: str, req: Any) -> Any | None:
    import grpc

    try:
        return s.call(service, method, req)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


# How runed names a missing reference in a field violation.
_MISSING_REF = re.compile(r'^(secret|configmap|service) "([^"]+)" not found in namespace "([^"]+)"$')


def _declared(cast: Cast) -> set[tuple[str, str, str]]:
    return (
        {("secret", x.namespace, x.name) for x in cast.secrets}
        | {("configmap", x.namespace, x.name) for x in cast.configmaps}
        | {("service", x.namespace, x.name) for x in cast.services}
    )


def _server_dry_run(
    s: Session, cast: Cast, svc: Any, create_ns: bool, tag: str, force: bool, cause: str
) -> tuple[str, list[str]]:
    """What runed says applying ``svc`` would do ("would be created", "would be updated" or "unchanged"), and
    for an update its diff against the stored spec (``path old -> new`` lines).

    runed runs every check of a real call. A reference to an object this same cast creates earlier
    cannot exist yet; only when every violation is such a reference is the server's verdict replaced
    by the client-side comparison.
    """
    import grpc

    svpb = pb2("service")
    try:
        if force and _existing(
            s, "ServiceService", "GetService", svpb.GetServiceRequest(name=svc.name, namespace=svc.namespace)
        ):
            req: Any = svpb.UpdateServiceRequest(
                service=svc, deployment_tag=tag, force=True, change_cause=cause, dry_run=True
            )
            resp = s.call("ServiceService", "UpdateService", req)
        else:
            req = svpb.CreateServiceRequest(
                service=svc, deployment_tag=tag, ensure_namespace=create_ns, change_cause=cause, dry_run=True
            )
            resp = s.call("ServiceService", "CreateService", req)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.INVALID_ARGUMENT:
            raise
        refs = [_MISSING_REF.match(why) for _, why in field_violations(e)]
        if not refs or not all(m and (m[1], m[3], m[2]) in _declared(cast) for m in refs):
            raise
        return "", []
    return str(resp.status.message).removeprefix("dry run: "), list(resp.status.details)


def _dry_run(s: Session, cast: Cast, create_ns: bool, tag: str, force: bool, cause: str) -> None:
    """Ask runed what applying would do (services: a server-side dry run) and show the differences."""
    cpb, spb, svpb = pb2("configmap"), pb2("secret"), pb2("service")
    for cm in cast.configmaps:
        cur = _existing(
            s, "ConfigmapService", "GetConfigmap", cpb.GetConfigmapRequest(name=cm.name, namespace=cm.namespace)
        )
        _report("configmap", cm, None if cur is None else _changed_fields(cm, cur.configmap))
    for sec in cast.secrets:
        # Keys only: ListSecrets needs no permission to read values and never returns them.
        req = spb.ListSecretsRequest(namespace=sec.namespace, field_selector={"name": sec.name})
        found = [x for x in s.call("SecretService", "ListSecrets", req).secrets if x.name == sec.name]
        if not found:
            _report("secret", sec, None)
        else:
            _report("secret", sec, [] if set(found[0].data) == set(sec.data) else ["data"], maybe=True)
    for svc in cast.services:
        verdict, diff = _server_dry_run(s, cast, svc, create_ns, tag, force, cause)
        if verdict == "would be created":
            _report("service", svc, None)
            continue
        cur = _existing(
            s, "ServiceService", "GetService", svpb.GetServiceRequest(name=svc.name, namespace=svc.namespace)
        )
        if cur is None:
            _report("service", svc, None)
        elif verdict == "unchanged":
            _report("service", svc, [])
        elif diff:
            # runed's own diff: every value that would change, old -> new, defaults included.
            _report("service", svc, diff)
        else:
            # Server-side defaults can make a spec differ where no field the file sets does.
            _report("service", svc, _changed_fields(svc, cur.service) or (["spec"] if verdict else []))


def _report(kind: str, obj: Any, changed: list[str] | None, maybe: bool = False) -> None:
    ref = f"{kind}/{obj.name} (namespace {obj.namespace})"
    if changed is None:
        click.echo(f"{ref} would be created (dry run)")
    elif changed:
        click.echo(f"{ref} would be updated: {', '.join(changed)} (dry run)")
    else:
        click.echo(f"{ref} {'keys unchanged, values may change' if maybe else 'unchanged'} (dry run)")


def _apply(s: Session, cast: Cast, create_ns: bool, tag: str, force: bool, cause: str) -> None:
    cpb, spb, svpb = pb2("configmap"), pb2("secret"), pb2("service")
    for cm in cast.configmaps:
        s.call(
            "ConfigmapService", "CreateConfigmap", cpb.CreateConfigmapRequest(configmap=cm, ensure_namespace=create_ns)
        )
        click.echo(f"configmap/{cm.name} applied (namespace {cm.namespace})")
    for sec in cast.secrets:
        s.call("SecretService", "CreateSecret", spb.CreateSecretRequest(secret=sec, ensure_namespace=create_ns))
        click.echo(f"secret/{sec.name} applied (namespace {sec.namespace})")
    for svc in cast.services:
        if force:
            cur = _existing(
                s, "ServiceService", "GetService", svpb.GetServiceRequest(name=svc.name, namespace=svc.namespace)
            )
            if cur is not None:
                req = svpb.UpdateServiceRequest(service=svc, deployment_tag=tag, force=True, change_cause=cause)
                resp = s.call("ServiceService", "UpdateService", req)
                click.echo(f"service/{svc.name} updated (namespace {svc.namespace}, forced)")
                continue
        req = svpb.CreateServiceRequest(service=svc, deployment_tag=tag, ensure_namespace=create_ns, change_cause=cause)
        resp = s.call("ServiceService", "CreateService", req)
        gen = resp.service.metadata.generation
        click.echo(f"service/{svc.name} applied (namespace {svc.namespace}, generation {gen})")


def wait_ready(s: Session, services: list[tuple[str, str, int]], timeout: float) -> None:
    """Wait until every ``(namespace, name, scale)`` service is Running with ``scale`` running instances.

    A service whose status is final ends the wait for it at once: Completed (a job that ran to
    completion) counts as ready, Failed (an instance that is not restarted) fails the command.
    """
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    svpb, ipb = pb2("service"), pb2("instance")
    running_status = ipb.INSTANCE_STATUS_RUNNING
    console = Console(stderr=True)
    deadline = time.monotonic() + timeout
    state: dict[tuple[str, str], tuple[str, int, int, str]] = {}
    failed: dict[str, str] = {}

    def poll() -> bool:
        done = True
        by_ns: dict[str, list[Any]] = {}
        health: dict[str, dict[str, Any] | None] = {}
        for ns, _, _ in services:
            if ns not in by_ns:
                by_ns[ns] = list_instances(s, ns)
                health[ns] = instance_health(s, ns, checks=True)
        healthy = pb2("health").HEALTH_STATUS_HEALTHY
        for ns, name, _ in services:
            svc = s.call("ServiceService", "GetService", svpb.GetServiceRequest(name=name, namespace=ns)).service
            insts = [i for i in by_ns[ns] if i.service_name == name]
            running = sum(1 for i in insts if i.status == running_status)
            # READY counts the instances that pass their readiness probe, when runed tells; a
            # running one that does not says why (its probe's latest failure).
            ready, msgs = running, [i.status_message for i in insts if i.status_message and i.status != running_status]
            comps = health[ns]
            if comps is not None:
                up = [comps.get(i.id) for i in insts if i.status == running_status]
                ready = sum(1 for c in up if c is not None and c.status == healthy)
                msgs += [not_ready_reason(c) for c in up if c is not None and c.status != healthy]
            state[(ns, name)] = (svc_status(svc.status), ready, svc.scale, msgs[0] if msgs else "")
            if svc.status_final:
                # Nothing will start again by itself: waiting longer cannot change the outcome.
                if svc.status != svpb.SERVICE_STATUS_COMPLETED:
                    failed[name] = svc.status_message or svc_status(svc.status)
                continue
            if running < svc.scale or (svc.scale > 0 and svc.status != svpb.SERVICE_STATUS_RUNNING):
                done = False
        return done

    def view() -> Table:
        t = Table(box=None, show_edge=False)
        for col in ("SERVICE", "NAMESPACE", "STATUS", "READY", "MESSAGE"):
            t.add_column(col)
        for (ns, name), (st, ready, scale, msg) in state.items():
            ok = (ready >= scale and st in ("Running", "-")) or st == "Completed"
            mark = "[red]✗[/]" if name in failed else ("[green]✓[/]" if ok else "[yellow]…[/]")
            t.add_row(f"{mark} {name}", ns, st, f"{ready}/{scale}", msg[:100])
        return t

    with Live(view(), console=console, refresh_per_second=8, transient=not console.is_terminal) as live:
        while True:
            ok = poll()
            live.update(view())
            if failed:
                live.stop()
                reasons = "; ".join(f"service {name} failed: {why}" for name, why in failed.items())
                raise CliError(f"{reasons}; see `rune logs SERVICE`", EXIT_PRECONDITION)
            if ok:
                break
            if time.monotonic() > deadline:
                live.stop()
                waiting = [
                    f"{name} {ready}/{scale} ready, {st}" + (f" ({msg})" if msg else "")
                    for (_, name), (st, ready, scale, msg) in state.items()
                    if ready < scale or (scale > 0 and st != "Running")
                ]
                raise CliError(
                    f"timed out after {timeout:g}s waiting for services to be ready: {'; '.join(waiting)}; "
                    "see `rune get instances -o wide` and `rune logs SERVICE`",
                    EXIT_TIMEOUT,
                )
            time.sleep(0.25)
    names = ", ".join(
        name + (" (completed)" if state[(ns, name)][0] == "Completed" else "") for ns, name, _ in services
    )
    click.echo(f"ready: {names}")


@click.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("-n", "--namespace", help="Override the namespace of every object.")
@click.option("--tag", default="", help="Deployment tag (recorded as the change cause).")
@click.option("--change-cause", default="", help="Why this is being cast (kept in `rune history`).")
@click.option("--dry-run", is_flag=True, help="Say what would change, change nothing.")
@click.option("--detach", is_flag=True, help="Return once applied, without waiting for readiness.")
@click.option("--timeout", default="5m", show_default=True, help="How long to wait for readiness.")
@click.option("-r", "--recursive", is_flag=True, help="Read directories recursively.")
@click.option("--force", is_flag=True, help="Force a new generation even if the spec is unchanged.")
@click.option("--create-namespace", is_flag=True, help="Create missing namespaces.")
@click.option("-f", "--values", "values", multiple=True, type=click.Path(exists=True), help="Runeset values file.")
@click.option("--set", "sets", multiple=True, help="Runeset value key.path=value.")
@click.option("--render", is_flag=True, help="Print the rendered runeset casts and stop.")
@click.option(
    "--release",
    default="",
    help="Release name: {{ .Release.Name }} in runesets, a release=NAME label on each service, the change cause.",
)
@pass_session
def cast(
    s: Session,
    paths: tuple[str, ...],
    namespace: str | None,
    tag: str,
    change_cause: str,
    dry_run: bool,
    detach: bool,
    timeout: str,
    recursive: bool,
    force: bool,
    create_namespace: bool,
    values: tuple[str, ...],
    sets: tuple[str, ...],
    render: bool,
    release: str,
) -> None:
    """Apply cast FILES, DIRS or runesets: configmaps, then secrets, then services; then wait until ready."""
    wait_for = seconds(timeout, "--timeout")
    c, rendered = load_cast(paths, namespace, recursive, values, sets, release)
    if release:
        # The release's services can be found again: rune get svc -l release=NAME.
        for svc in c.services:
            svc.labels["release"] = release
        change_cause = change_cause or f"release {release}"
    if render:
        for path, text in rendered:
            sys.stdout.write(f"# Source: {path}\n{text}\n---\n")
        return
    for w in c.warnings:
        sys.stderr.write(f"warning: {w}\n")
    if not (c.services or c.secrets or c.configmaps):
        raise CliError("nothing to cast: no service, secret or configmap found", EXIT_INVALID)
    if dry_run:
        _dry_run(s, c, create_namespace, tag, force, change_cause or tag)
        return
    _apply(s, c, create_namespace, tag, force, change_cause or tag)
    if detach or not c.services:
        return
    wait_ready(s, [(x.namespace, x.name, x.scale) for x in c.services], wait_for)


@click.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("-r", "--recursive", is_flag=True, help="Read directories recursively.")
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
@click.option("--quiet", is_flag=True, help="Print only problems.")
@click.option("--exit-on-fail", is_flag=True, help="Stop at the first path with an error (the rest are not checked).")
@click.option("--fix", is_flag=True, help="Repair what keeps a file's meaning (CRLF, tabs, trailing blanks) in place.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option(
    "--context", "context", type=click.IntRange(min=0), default=1, show_default=True, help="Lines around each error."
)
@click.option("--expand-context", is_flag=True, help="Show each error's whole enclosing YAML block.")
@click.option("-f", "--values", "values", multiple=True, type=click.Path(exists=True), help="Runeset values file.")
@click.option("--set", "sets", multiple=True, help="Runeset value key.path=value.")
def lint(
    paths: tuple[str, ...],
    recursive: bool,
    strict: bool,
    quiet: bool,
    exit_on_fail: bool,
    fix: bool,
    fmt: str,
    context: int,
    expand_context: bool,
    values: tuple[str, ...],
    sets: tuple[str, ...],
) -> None:
    """Check cast files offline: structure, unknown keys (with lines), references and dependency cycles.

    Exit 0 when clean, 8 on an error (or, with --strict, a warning).
    """
    from rune.cli.lint import excerpt, fix_file, split_problem

    fixed: list[tuple[str, list[str]]] = []
    if fix:
        plain = [p for p in paths if not is_archive(Path(p)) and not is_runeset(Path(p))]
        for cf in collect_files(plain, recursive):
            if repaired := fix_file(cf):
                fixed.append((str(cf), repaired))
    errors: list[str] = []
    warnings: list[str] = []
    count = 0
    # Each path alone with --exit-on-fail (to stop at the first bad one), else all together (cross-file checks).
    groups = [(p,) for p in paths] if exit_on_fail else [paths]
    skipped = 0
    for n, group in enumerate(groups):
        e, w, c = _lint_paths(group, recursive, values, sets)
        errors, warnings, count = errors + e, warnings + w, count + c
        if exit_on_fail and (e or (strict and w)):
            skipped = len(groups) - n - 1
            break
    failed = bool(errors) or (strict and bool(warnings))
    if fmt == "json":
        problems = []
        for p in errors:
            where = split_problem(p)
            problems.append(
                {
                    "file": where[0] if where else "",
                    "line": where[1] if where else 0,
                    "message": where[2] if where else p,
                }
                | ({"context": lines} if (lines := excerpt(p, context, expand_context)) else {})
            )
        doc = {"ok": not failed, "objects": count, "errors": errors, "warnings": warnings, "problems": problems}
        doc |= {"fixed": [{"file": name, "fixes": fixes} for name, fixes in fixed], "skipped_paths": skipped}
        click.echo(json.dumps(doc, indent=2))
    else:
        for name, fixes in fixed:
            click.echo(f"fixed: {name}: {', '.join(fixes)}")
        for problem in errors:
            click.echo(f"error: {problem}", err=True)
            for line in excerpt(problem, context, expand_context):
                click.echo(line, err=True)
        for warning in warnings:
            click.echo(f"warning: {warning}", err=True)
        if skipped:
            click.echo(f"stopped at the first failing path: {skipped} path(s) not checked", err=True)
        if not quiet and not failed:
            click.echo(f"ok: {count} objects in {len(paths)} path(s)")
    if failed:
        sys.exit(EXIT_INVALID)


def _lint_paths(
    paths: tuple[str, ...], recursive: bool, values: tuple[str, ...], sets: tuple[str, ...]
) -> tuple[list[str], list[str], int]:
    """(errors, warnings, objects) of the casts at ``paths`` read together."""
    errors: list[str] = []
    warnings: list[str] = []
    count = 0
    try:
        c, _ = load_cast(paths, None, recursive, values, sets)
        count = len(c.services) + len(c.secrets) + len(c.configmaps)
        warnings += c.warnings
        if not count:
            # What `rune cast` refuses: a clean lint of it would say the file is fine to cast.
            warnings.append("nothing to cast: no service, secret or configmap found")
        errors += ["dependency cycle: " + " -> ".join(cyc) for cyc in dependency_cycles(c.services)]
        declared = {(x.namespace, x.name) for x in c.secrets}, {(x.namespace, x.name) for x in c.configmaps}
        for svc in c.services:
            for ef in svc.env_from:
                kind, name = ("secret", ef.secret_name) if ef.secret_name else ("configmap", ef.configmap_name)
                pool = declared[0] if kind == "secret" else declared[1]
                if (ef.namespace or svc.namespace, name) not in pool:
                    warnings.append(f"service {svc.name}: envFrom {kind} '{name}' is not declared in these files")
    except CastErrors as e:
        errors += e.problems
    return errors, warnings, count


@click.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False), help="Archive path (default DIR.runeset.tgz).")
@click.option("--sha256", "show_sha", is_flag=True, help="Print the archive's sha256.")
def pack(directory: str, out: str | None, show_sha: bool) -> None:
    """Pack a runeset directory into DIR.runeset.tgz (castable with `rune cast`)."""
    from rune.cli.runeset import pack as pack_runeset

    root = Path(directory).resolve()
    target = Path(out) if out else root.parent / f"{root.name}.runeset.tgz"
    digest = pack_runeset(root, target)
    click.echo(f"packed {root.name} into {target}" + (f" (sha256 {digest})" if show_sha else ""))
