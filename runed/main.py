"""The `runed` command: supervisor by default, one role with `serve --role`, and admin tools."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from runed import __version__
from runed.core.config import Config, ConfigError, load


def _server_options(f: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--config", "config_file", default=None, help="runefile.yaml to load."),
        click.option("--grpc-addr", default=None, help="gRPC listen address [default :7863]."),
        click.option("--http-addr", default=None, help="REST gateway listen address [default :7861]."),
        click.option("--data-dir", default=None, help="Data directory [default $XDG_DATA_HOME/rune]."),
        click.option(
            "--store-url",
            default=None,
            help="sqlite:///path or postgresql://user@host:port/db [default <data dir>/runed.db].",
        ),
        click.option("--log-level", default=None, help="debug, info, warning or error."),
        click.option("--log-format", default=None, type=click.Choice(["text", "json"]), help="Log format."),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


def _merge(ctx: click.Context, **kwargs: Any) -> dict[str, Any]:
    """Options given on the subcommand win over those given before it."""
    parent = dict(ctx.obj or {})
    parent.update({k: v for k, v in kwargs.items() if v is not None})
    return parent


def _load(opts: dict[str, Any]) -> Config:
    flags = {
        "server.grpc_address": opts.get("grpc_addr"),
        "server.http_address": opts.get("http_addr"),
        "data_dir": opts.get("data_dir"),
        "store.url": opts.get("store_url"),
        "log.level": opts.get("log_level"),
        "log.format": opts.get("log_format"),
    }
    try:
        return load(flags, config_file=opts.get("config_file"))
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


def _handles_errors(f: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except ConfigError as e:
            raise click.ClickException(str(e)) from None

    return wrapper


class _Group(click.Group):
    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage("runed", "[OPTIONS] [COMMAND]")


@click.group(cls=_Group, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@_server_options
@click.version_option(__version__, "--version", prog_name="runed")
@click.pass_context
def cli(ctx: click.Context, /, **kwargs: Any) -> None:
    """runed: the rune control plane (gRPC on :7863, REST on :7861).

    Without a command, runs the supervisor and all roles.
    """
    ctx.obj = {k: v for k, v in kwargs.items() if v is not None}
    if ctx.invoked_subcommand is None:
        ctx.exit(_run_supervisor(_load(ctx.obj)))


def _run_supervisor(cfg: Config) -> int:
    from runed.server.supervisor import DEFAULT_ROLES, Supervisor, check_data_dir, hold_data_dir
    from runed.store.open import open_configured
    from runed.store.sqlite import StoreError

    problem = check_data_dir(cfg.data_path)
    if problem:
        raise click.ClickException(problem)
    # Held (open) until this process exits.
    _held, problem = hold_data_dir(cfg.data_path)
    if problem:
        raise click.ClickException(problem)
    try:
        # Migrate once, before any role opens the database.
        open_configured(cfg).close()
    except StoreError as e:
        raise click.ClickException(str(e)) from None
    return Supervisor(cfg, DEFAULT_ROLES).run()


@cli.command()
@click.option("--role", required=True, help="grpc, rest, controller or node.")
@_server_options
@click.pass_context
def serve(ctx: click.Context, /, role: str, **kwargs: Any) -> None:
    """Run one role in this process (what the supervisor starts)."""
    from runed.server import logging as log
    from runed.server.roles import run_role
    from runed.server.supervisor import check_data_dir

    cfg = _load(_merge(ctx, **kwargs))
    problem = check_data_dir(cfg.data_path)
    if problem:
        raise click.ClickException(problem)
    _die_with_supervisor()
    log.setup(cfg.log.level, cfg.log.format, role)
    ctx.exit(run_role(cfg, role))


def _die_with_supervisor() -> None:
    """A role started by the supervisor ends when the supervisor dies, even by SIGKILL."""
    parent = os.environ.get("RUNED_SUPERVISOR_PID")
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != int(parent):
        sys.exit(1)


@cli.command()
@click.option("--config", "config_file", required=True, help="runefile.yaml to check.")
@click.option("--store-url", default=None, help="Check this store instead of the file's store.url.")
def validate(config_file: str, store_url: str | None) -> None:
    """Check a runefile without starting: every value, every key, then its store; prints every problem and exits 1.

    The store must be reachable and at a schema version this runed can start on (none yet or
    older is fine: the start migrates it). Nothing is written to it.
    """
    from runed.store.check import schema_state

    try:
        cfg = load({"store.url": store_url}, env={}, config_file=config_file)
    except ConfigError as e:
        # One line per problem, each naming its key path, so a fix-and-retry loop ends in one round.
        n = len(e.problems)
        click.echo(f"{config_file}: invalid ({n} problem{'s' if n != 1 else ''})", err=True)
        for problem in e.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(1)
    state = schema_state(cfg.store.url)
    store_ok, store_detail = state.startable()
    if not store_ok:
        click.echo(f"{config_file}: {store_detail}", err=True)
        sys.exit(1)
    # Keys can only differ from a store that already has hosts, hence a schema (and nothing to migrate).
    key_problems = _key_problems(cfg) if state.current else []
    if key_problems:
        click.echo(f"{config_file}: this host's keys do not match the store's", err=True)
        for problem in key_problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(1)
    click.echo(f"{config_file}: ok (data_dir={cfg.data_dir}, grpc={cfg.server.grpc_address}; {store_detail})")


def _key_problems(cfg: Config) -> list[str]:
    """Why this host's token key and KEK do not match the store's check values; reads only (creates no key)."""
    from runed.auth import keycheck
    from runed.auth.identity import KEY_FILE, load_server_key
    from runed.core import errors
    from runed.secrets.crypto import ENV_MASTER_KEY, CryptoError, SecretCrypto
    from runed.store.check import read_object

    try:
        stored = read_object(cfg.store.url, keycheck.KIND, keycheck.NAMESPACE, keycheck.NAME)
    except errors.StoreUnavailable as e:
        return [e.message]
    if not stored:
        return []  # no host recorded its keys yet: this one's become the store's at its start
    crypto = SecretCrypto(cfg)
    auth_file = cfg.data_path / KEY_FILE
    where = str(crypto.path) if crypto.source == "file" else ENV_MASTER_KEY
    missing = [str(f) for f in (auth_file, crypto.path if crypto.source == "file" else None) if f and not f.exists()]
    if missing:
        return [
            f"{' and '.join(missing)} missing: a start would create new keys, which the store's hosts do not "
            f"use; copy them from a host that already uses this store"
        ]
    try:
        kid = crypto.load()
    except CryptoError as e:
        return [f"the secrets KEK cannot be loaded: {e}"]
    return keycheck.problems(stored, keycheck.HostKeys(load_server_key(cfg.data_path), kid, cfg.data_path, where))


@cli.command()
@click.option("--reset", is_flag=True, help="Revoke every root token and issue a new one.")
@_server_options
@click.pass_context
def bootstrap(ctx: click.Context, /, reset: bool, **kwargs: Any) -> None:
    """Print a root token, working on the data dir directly (run it on the server host).

    Without --reset this is AdminBootstrap (once per data dir); --reset recovers a lost token.
    """
    import getpass

    from runed.auth.identity import local_bootstrap
    from runed.core import errors
    from runed.store.open import open_configured

    cfg = _load(_merge(ctx, **kwargs))
    try:
        # The store as the server opens it (its URL, its SQLite settings).
        store = open_configured(cfg)
        try:
            # Audited as the local account that ran it: reaching the data dir is its authority.
            issued, revoked = local_bootstrap(store, cfg.data_path, reset=reset, actor=f"local:{getpass.getuser()}")
        finally:
            store.close()
    except errors.RuneError as e:
        raise click.ClickException(e.message) from None
    if revoked:
        click.echo(f"revoked {revoked} root token(s)", err=True)
    click.echo(issued.secret)


@cli.group()
def kek() -> None:
    """Manage the key-encryption key that protects secret data keys."""


@kek.command("rotate")
@_server_options
@click.pass_context
def kek_rotate(ctx: click.Context, /, **kwargs: Any) -> None:
    """Install a new KEK and re-wrap every secret's data key under it (safe while runed runs)."""
    import getpass

    from runed.auth import keycheck
    from runed.secrets.access import rewrap_all
    from runed.secrets.crypto import CryptoError, SecretCrypto
    from runed.store.base import AuditEntry
    from runed.store.open import open_configured
    from runed.store.sqlite import StoreError

    cfg = _load(_merge(ctx, **kwargs))
    try:
        store = open_configured(cfg)
    except StoreError as e:
        raise click.ClickException(str(e)) from None
    try:
        result = rewrap_all(store, SecretCrypto(cfg))
        # Hosts sharing the store must now hold the new KEK (keycheck refuses a start without it).
        keycheck.record_kek(store, result.new_kid)
        # Key ids only: they name keys without revealing them.
        store.audit(
            AuditEntry(
                subject=f"local:{getpass.getuser()}",
                method="runed kek rotate",
                resource="secrets",
                verb="rotate-kek",
                namespace="",
                name="",
                outcome="success",
                code="OK",
                request_id="",
                peer="local",
                detail=f"{result.old_kid or '-'} -> {result.new_kid}, {result.rewrapped} data keys re-wrapped",
            )
        )
    except CryptoError as e:
        raise click.ClickException(str(e)) from None
    finally:
        store.close()
    click.echo(
        f"kek rotated: {result.old_kid or '-'} -> {result.new_kid}; {result.rewrapped} data keys re-wrapped"
        f" in {result.passes} pass(es); retired keys removed: {', '.join(result.removed_kids) or 'none'}"
    )


def main() -> None:
    cli(prog_name="runed")


if __name__ == "__main__":
    main()
