"""``rune admin registries``: image registry credentials and their auth status."""

from __future__ import annotations

import sys
from typing import Any

import click

from rune.cli.client import Session, pb2
from rune.cli.commands.admin.shared import emit, fmt_option
from rune.cli.commands.common import kv_pairs, pass_session
from rune.cli.errors import EXIT_USAGE, CliError
from rune.cli.output import dump, table, to_dict


@click.group()
def registries() -> None:
    """Image registry credentials."""


@registries.command("list")
@fmt_option
@pass_session
def reg_list(s: Session, fmt: str) -> None:
    """List registries."""
    regs = s.call("AdminService", "ListRegistries", pb2("admin").ListRegistriesRequest()).registries
    if emit([to_dict(r) for r in regs], fmt):
        return
    table(
        [[r.name, r.registry, r.auth.type or "-", r.auth.from_secret or "-"] for r in regs],
        ["NAME", "REGISTRY", "TYPE", "SECRET"],
    )


@registries.command("show")
@click.argument("name")
@pass_session
def reg_show(s: Session, name: str) -> None:
    """Show one registry (credentials masked by runed)."""
    dump(to_dict(s.call("AdminService", "GetRegistry", pb2("admin").GetRegistryRequest(name=name)).registry), "yaml")


def _registry(
    name: str, registry: str, typ: str, username: str, password: str, tok: str, region: str,
    from_secret: str, bootstrap_auth: bool, manage: str, immutable: bool, data: tuple[str, ...],
) -> Any:  # fmt: skip
    apb = pb2("admin")
    auth = apb.RegistryAuthConfig(
        type=typ, username=username, password=password, token=tok, region=region, from_secret=from_secret,
        bootstrap=bootstrap_auth, manage=manage, immutable=immutable, data=kv_pairs(data, "--data"),
    )  # fmt: skip
    return apb.RegistryConfig(name=name, registry=registry, auth=auth)


_REG_OPTS = [
    click.option("--name", required=True),
    click.option("--registry", default=""),
    click.option("--type", "typ", type=click.Choice(["", "basic", "token", "ecr", "dockerconfigjson"]), default=""),
    click.option("--username", default=""),
    click.option("--password", default=""),
    click.option("--token", "tok", default=""),
    click.option("--region", default=""),
    click.option("--from-secret", default=""),
    click.option("--bootstrap-auth", is_flag=True),
    click.option("--manage-auth", "manage", type=click.Choice(["", "create", "update", "ignore"]), default=""),
    click.option("--immutable", is_flag=True),
    click.option("--data", multiple=True, help="k=v (repeatable)."),
]


def _reg_options(f: Any) -> Any:
    for opt in reversed(_REG_OPTS):
        f = opt(f)
    return f


@registries.command("add")
@_reg_options
@pass_session
def reg_add(s: Session, /, **kw: Any) -> None:
    """Add a registry."""
    r = s.call("AdminService", "AddRegistry", pb2("admin").AddRegistryRequest(registry=_registry(**kw))).registry
    click.echo(f"registry {r.name} added")


@registries.command("update")
@_reg_options
@pass_session
def reg_update(s: Session, /, **kw: Any) -> None:
    """Update a registry."""
    r = s.call("AdminService", "UpdateRegistry", pb2("admin").UpdateRegistryRequest(registry=_registry(**kw))).registry
    click.echo(f"registry {r.name} updated")


@registries.command("remove")
@click.argument("name")
@pass_session
def reg_remove(s: Session, name: str) -> None:
    """Remove a registry."""
    s.call("AdminService", "RemoveRegistry", pb2("admin").RemoveRegistryRequest(name=name))
    click.echo(f"registry {name} removed")


@registries.command("bootstrap-auth")
@click.option("--name", default="")
@click.option("--type", "typ", default="")
@click.option("--all", "all_", is_flag=True)
@pass_session
def reg_bootstrap(s: Session, name: str, typ: str, all_: bool) -> None:
    """Create/update registry credential secrets from their configured data."""
    if not (name or typ or all_):
        raise CliError("give --name, --type or --all", EXIT_USAGE)
    req = pb2("admin").BootstrapAuthRequest(name=name, type=typ, all=all_)
    click.echo(f"updated {s.call('AdminService', 'BootstrapAuth', req).updated} registries")


@registries.command("test")
@click.argument("name")
@click.option("--image", "image_ref", default="")
@pass_session
def reg_test(s: Session, name: str, image_ref: str) -> None:
    """Check a registry's credentials."""
    resp = s.call("AdminService", "TestRegistry", pb2("admin").TestRegistryRequest(name=name, image_ref=image_ref))
    click.echo(f"{'ok' if resp.ok else 'failed'}: {resp.message}")
    if not resp.ok:
        sys.exit(1)


@registries.command("status")
@pass_session
def reg_status(s: Session) -> None:
    """Per-registry auth status."""
    regs = s.call("AdminService", "RegistriesStatus", pb2("admin").RegistriesStatusRequest()).registries
    rows = [
        [
            r.name,
            r.registry,
            r.type or "-",
            "yes" if r.auth_configured else "no",
            r.last_bootstrap_at or "-",
            r.last_error or "-",
        ]
        for r in regs
    ]
    table(rows, ["NAME", "REGISTRY", "TYPE", "AUTH", "BOOTSTRAPPED", "ERROR"])
