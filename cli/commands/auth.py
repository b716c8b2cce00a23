"""Contexts and identity: login, whoami, config view|set-context|use-context|list-contexts|delete-context."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from rune.cli.client import Session, pb2
from rune.cli.config import normalise_server
from rune.cli.errors import EXIT_NOT_FOUND, EXIT_USAGE, CliError
from rune.cli.output import dump, table

pass_session = click.make_pass_decorator(Session)


def _read_token(token: str | None, token_file: str | None) -> str | None:
    if token and token_file:
        raise CliError("give --token or --token-file, not both", EXIT_USAGE)
    if token_file:
        return Path(token_file).expanduser().read_text().strip()
    return token.strip() if token else None


@click.command()
@click.argument("context_name", required=False, default="default")
@click.option("--server", help="runed address (default: global --server, RUNE_SERVER, else localhost:7863).")
@click.option("--namespace", "-n", "namespace", help="Default namespace for this context.")
@click.option("--token", help="Bearer token.")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False), help="File holding the token.")
@click.option("--no-verify", is_flag=True, help="Save without checking the token with WhoAmI.")
@click.option("--tls/--no-tls", "tls", default=None, help="Connect with TLS.")
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False), help="CA bundle for TLS.")
@pass_session
def login(
    s: Session,
    context_name: str,
    server: str | None,
    namespace: str | None,
    token: str | None,
    token_file: str | None,
    no_verify: bool,
    tls: bool | None,
    ca_file: str | None,
) -> None:
    """Save a context (server + token) and make it current; the token is verified with WhoAmI."""
    secret = _read_token(token, token_file)
    if not secret:
        secret = os.environ.get("RUNE_TOKEN")
    if not secret:
        raise CliError("a token is required: --token, --token-file or RUNE_TOKEN", EXIT_USAGE)
    previous = dict(s.config.contexts.get(context_name) or {})
    if previous:
        # Re-logging into a context keeps its TLS settings and namespace unless given again.
        s.context_flag = context_name
    address = normalise_server(server or s.server_flag or os.environ.get("RUNE_SERVER") or previous.get("server", ""))
    s.server_flag, s.token_flag = address, secret
    if tls is not None:
        s.tls_flag = tls
    if ca_file:
        s.ca_file_flag = str(Path(ca_file).resolve())
    who = None
    if not no_verify:
        who = s.call("AuthService", "WhoAmI", pb2("auth").WhoAmIRequest())
    ctx: dict[str, Any] = previous | {"server": address, "token": secret}
    if namespace:
        ctx["defaultNamespace"] = namespace
    if s.tls_flag:
        ctx["tls"] = True
    if s.ca_file_flag:
        ctx["caFile"] = s.ca_file_flag
    cfg = s.config
    cfg.contexts[context_name] = ctx
    cfg.current = context_name
    cfg.save()
    who_txt = f" as {who.subject_name or who.subject_id}" if who is not None else ""
    click.echo(f'Logged in to {address}{who_txt}; context "{context_name}" saved in {cfg.path} and selected.')


@click.command()
@click.option("-o", "--output", "fmt", type=click.Choice(["table", "json", "yaml"]), default="table")
@pass_session
def whoami(s: Session, fmt: str) -> None:
    """Show the subject behind the current token, its policies and the token's own scope."""
    resp = s.call("AuthService", "WhoAmI", pb2("auth").WhoAmIRequest())
    data = {
        "subjectId": resp.subject_id,
        "subjectName": resp.subject_name,
        "subjectEmail": resp.subject_email,
        "policies": list(resp.policies),
        # The token's own scope: calls need it as well as the user's policies ("all" = unscoped).
        "tokenPolicies": list(resp.token_policies),
        "authMethod": resp.auth_method,
        "server": s.target,
    }
    if fmt != "table":
        dump(data, fmt)
        return
    if not resp.subject_id and not resp.subject_name:
        click.echo(f"anonymous at {s.target} (no valid token)")
        return
    rows = {**data, "tokenPolicies": ", ".join(resp.token_policies) or "all of the user's"}
    table([[k, ", ".join(v) if isinstance(v, list) else str(v)] for k, v in rows.items()], None)


@click.group()
def config() -> None:
    """View and edit CLI contexts (stored 0600 in ~/.rune/config.yaml or --config / RUNE_CLI_CONFIG)."""


@config.command("view")
@click.option("--show-tokens", is_flag=True, help="Print tokens instead of masking them.")
@pass_session
def view(s: Session, show_tokens: bool) -> None:
    """Print the contexts file (tokens masked)."""
    cfg = s.config
    contexts = {}
    for name, c in cfg.contexts.items():
        c = dict(c)
        if c.get("token") and not show_tokens:
            c["token"] = "****" + str(c["token"])[-4:]
        contexts[name] = c
    dump({"current-context": cfg.current, "contexts": contexts}, "yaml")


@config.command("set-context")
@click.argument("name")
@click.option("--server")
@click.option("--token")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False))
@click.option("--default-namespace", "--namespace", "namespace")
@click.option("--tls/--no-tls", "tls", default=None)
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False))
@click.option("--cert-file", type=click.Path(exists=True, dir_okay=False), help="Client certificate (mTLS).")
@click.option("--key-file", type=click.Path(exists=True, dir_okay=False), help="Client key (mTLS).")
@click.option("--server-name", help="TLS server name override.")
@pass_session
def set_context(
    s: Session,
    name: str,
    server: str | None,
    token: str | None,
    token_file: str | None,
    namespace: str | None,
    tls: bool | None,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    server_name: str | None,
) -> None:
    """Create or update a context (only the given fields change)."""
    cfg = s.config
    c = dict(cfg.contexts.get(name) or {})
    secret = _read_token(token, token_file)
    updates: dict[str, Any] = {
        "server": normalise_server(server) if server else None,
        "token": secret,
        "defaultNamespace": namespace,
        "tls": tls,
        "caFile": str(Path(ca_file).resolve()) if ca_file else None,
        "certFile": str(Path(cert_file).resolve()) if cert_file else None,
        "keyFile": str(Path(key_file).resolve()) if key_file else None,
        "serverName": server_name,
    }
    c.update({k: v for k, v in updates.items() if v is not None})
    c.setdefault("server", "localhost:7863")
    cfg.contexts[name] = c
    if not cfg.current:
        cfg.current = name
    cfg.save()
    click.echo(f'context "{name}" saved')


def _use(s: Session, name: str) -> None:
    cfg = s.config
    if name not in cfg.contexts:
        raise CliError(f'context "{name}" not found (see `rune config list-contexts`)', EXIT_NOT_FOUND)
    cfg.current = name
    cfg.save()
    click.echo(f'switched to context "{name}"')


@config.command("use-context")
@click.argument("name")
@pass_session
def config_use_context(s: Session, name: str) -> None:
    """Make NAME the current context."""
    _use(s, name)


@click.command("use-context")
@click.argument("name")
@pass_session
def use_context(s: Session, name: str) -> None:
    """Make NAME the current context."""
    _use(s, name)


@config.command("list-contexts")
@click.option("--no-headers", is_flag=True)
@pass_session
def list_contexts(s: Session, no_headers: bool) -> None:
    """List contexts; the current one is marked with *."""
    cfg = s.config
    rows = [
        ["*" if n == cfg.current else "", n, str(c.get("server", "")), str(c.get("defaultNamespace", "default"))]
        for n, c in sorted(cfg.contexts.items())
    ]
    table(rows, None if no_headers else ["CURRENT", "NAME", "SERVER", "NAMESPACE"])


@config.command("delete-context")
@click.argument("name")
@pass_session
def delete_context(s: Session, name: str) -> None:
    """Remove a context (and its token) from the file."""
    cfg = s.config
    if name not in cfg.contexts:
        raise CliError(f'context "{name}" not found', EXIT_NOT_FOUND)
    del cfg.contexts[name]
    if cfg.current == name:
        cfg.current = next(iter(sorted(cfg.contexts)), "")
    cfg.save()
    click.echo(f'context "{name}" deleted')
    if not cfg.contexts:
        sys.stderr.write("no contexts left; run `rune login` to add one\n")
