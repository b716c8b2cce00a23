"""``rune create secret|configmap|namespace``: imperative creation from flags or k=v files."""

from __future__ import annotations

from pathlib import Path

import click

from rune.cli.client import Session, pb2
from rune.cli.commands.common import kv_pairs, pass_session
from rune.cli.errors import EXIT_INVALID, EXIT_USAGE, CliError


def _data(data: tuple[str, ...], from_file: tuple[str, ...], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for f in from_file:
        p = Path(f)
        text = p.read_text()
        if "=" in p.name or not any("=" in ln for ln in text.splitlines()):
            # key=path form or a plain file: the whole file is one value, keyed by its name.
            key, _, path = f.partition("=") if "=" in f else (p.name, "", f)
            out[key] = Path(path).read_text()
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            k, sep, v = line.partition("=")
            if not sep:
                raise CliError(f"{f}:{n}: expected key=value", EXIT_INVALID)
            out[k.strip()] = v
    out.update(kv_pairs(data, "--data"))
    if not out:
        raise CliError(f"a {what} needs data: --data k=v or --from-file FILE", EXIT_USAGE)
    return out


@click.group()
def create() -> None:
    """Create a secret, configmap or namespace."""


@create.command("secret")
@click.argument("name")
@click.option("-n", "--namespace")
@click.option("--data", multiple=True, help="key=value (repeatable).")
@click.option("--from-file", multiple=True, type=click.Path(exists=True, dir_okay=False), help="k=v lines, or a file.")
@click.option("--create-namespace", is_flag=True)
@pass_session
def create_secret(
    s: Session,
    name: str,
    namespace: str | None,
    data: tuple[str, ...],
    from_file: tuple[str, ...],
    create_namespace: bool,
) -> None:
    """Create (or update) a secret."""
    spb = pb2("secret")
    sec = spb.Secret(name=name, namespace=s.namespace(namespace), type="static", data=_data(data, from_file, "secret"))
    resp = s.call(
        "SecretService", "CreateSecret", spb.CreateSecretRequest(secret=sec, ensure_namespace=create_namespace)
    )
    click.echo(f"secret/{name} saved (namespace {sec.namespace}, version {resp.secret.version})")


@create.command("configmap")
@click.argument("name")
@click.option("-n", "--namespace")
@click.option("--data", multiple=True)
@click.option("--from-file", multiple=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--create-namespace", is_flag=True)
@pass_session
def create_configmap(
    s: Session,
    name: str,
    namespace: str | None,
    data: tuple[str, ...],
    from_file: tuple[str, ...],
    create_namespace: bool,
) -> None:
    """Create (or update) a configmap."""
    cpb = pb2("configmap")
    cm = cpb.Configmap(name=name, namespace=s.namespace(namespace), data=_data(data, from_file, "configmap"))
    req = cpb.CreateConfigmapRequest(configmap=cm, ensure_namespace=create_namespace)
    resp = s.call("ConfigmapService", "CreateConfigmap", req)
    click.echo(f"configmap/{name} saved (namespace {cm.namespace}, version {resp.configmap.version})")


create.add_command(create_configmap, "config")


@create.command("namespace")
@click.argument("name")
@click.option("--label", multiple=True, help="key=value (repeatable).")
@click.option("--description", default="")
@pass_session
def create_namespace(s: Session, name: str, label: tuple[str, ...], description: str) -> None:
    """Create a namespace."""
    npb = pb2("namespace")
    ns = npb.Namespace(name=name, labels=kv_pairs(label, "--label"), description=description)
    s.call("NamespaceService", "CreateNamespace", npb.CreateNamespaceRequest(namespace=ns))
    click.echo(f"namespace/{name} created")


create.add_command(create_namespace, "ns")
