"""``rune deps validate|graph|check|dependents``: dependency analysis over the services runed holds."""

from __future__ import annotations

import sys
from typing import Any

import click

from rune.cli.castfile import dependency_cycles
from rune.cli.client import Session
from rune.cli.commands.common import pass_session
from rune.cli.complete import names_of
from rune.cli.errors import EXIT_INVALID


def _all(s: Session) -> tuple[list[Any], set[tuple[str, str]], set[tuple[str, str]]]:
    from rune.cli.commands.objects import list_objects

    services, _ = list_objects(s, "services", "*", None, None, 0)
    secrets, _ = list_objects(s, "secrets", "*", None, None, 0)
    cms, _ = list_objects(s, "configmaps", "*", None, None, 0)
    return services, {(x.namespace, x.name) for x in secrets}, {(x.namespace, x.name) for x in cms}


def _dep_label(d: Any, ns: str) -> tuple[str, str, str]:
    kind = "service" if d.service else "secret" if d.secret else "configmap"
    return kind, d.namespace or ns, d.service or d.secret or d.configmap


def _problems(
    services: list[Any], secrets: set[tuple[str, str]], cms: set[tuple[str, str]], only: str = ""
) -> list[str]:
    known = {(x.namespace, x.name) for x in services}
    out = []
    for svc in services:
        if only and svc.name != only:
            continue
        for d in svc.dependencies:
            kind, ns, name = _dep_label(d, svc.namespace)
            pool = known if kind == "service" else secrets if kind == "secret" else cms
            if (ns, name) not in pool:
                out.append(f"{svc.namespace}/{svc.name}: {kind} {ns}/{name} does not exist")
    out += ["cycle: " + " -> ".join(c) for c in dependency_cycles(services)]
    return out


@click.group()
def deps() -> None:
    """Service dependency analysis."""


@deps.command("validate")
@click.option("-n", "--namespace", help="Only services of this namespace.")
@pass_session
def validate(s: Session, namespace: str | None) -> None:
    """Check that every dependency exists and there are no cycles."""
    services, secrets, cms = _all(s)
    problems = _problems(services, secrets, cms)
    if namespace:
        problems = [p for p in problems if p.startswith(f"{namespace}/") or p.startswith("cycle")]
    for p in problems:
        click.echo(f"error: {p}", err=True)
    if problems:
        sys.exit(EXIT_INVALID)
    click.echo(f"ok: {len(services)} services, dependencies valid")


@deps.command("check")
@click.argument("service", shell_complete=names_of("services"))
@click.option("-n", "--namespace")
@pass_session
def check(s: Session, service: str, namespace: str | None) -> None:
    """Check one service's dependencies."""
    services, secrets, cms = _all(s)
    ns = s.namespace(namespace)
    problems = [
        p
        for p in _problems([x for x in services if x.namespace == ns], secrets, cms, service)
        if not p.startswith("cycle")
    ]
    for p in problems:
        click.echo(f"error: {p}", err=True)
    if problems:
        sys.exit(EXIT_INVALID)
    click.echo(f"ok: {ns}/{service} dependencies satisfied")


@deps.command("dependents")
@click.argument("service", shell_complete=names_of("services"))
@click.option("-n", "--namespace")
@pass_session
def dependents(s: Session, service: str, namespace: str | None) -> None:
    """Services that depend on SERVICE."""
    services, _, _ = _all(s)
    ns = s.namespace(namespace)
    for svc in services:
        if any(d.service == service and (d.namespace or svc.namespace) == ns for d in svc.dependencies):
            click.echo(f"{svc.namespace}/{svc.name}")


@deps.command("graph")
@click.option("--format", "fmt", type=click.Choice(["text", "dot"]), default="text")
@click.option("-n", "--namespace")
@pass_session
def graph(s: Session, fmt: str, namespace: str | None) -> None:
    """Draw the dependency graph (text or Graphviz dot)."""
    services, _, _ = _all(s)
    if namespace:
        services = [x for x in services if x.namespace == namespace]
    if fmt == "dot":
        click.echo("digraph rune {")
        for svc in services:
            click.echo(f'  "{svc.namespace}/{svc.name}";')
            for d in svc.dependencies:
                kind, ns, name = _dep_label(d, svc.namespace)
                label = f"{ns}/{name}" if kind == "service" else f"{kind}:{ns}/{name}"
                click.echo(f'  "{svc.namespace}/{svc.name}" -> "{label}";')
        click.echo("}")
        return
    for svc in services:
        click.echo(f"{svc.namespace}/{svc.name}")
        for d in svc.dependencies:
            kind, ns, name = _dep_label(d, svc.namespace)
            click.echo(f"  └─ {kind} {ns}/{name}")
