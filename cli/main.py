"""The `rune` command: a click group whose subcommands are imported only when they run.

`rune --help` and `rune get services` stay fast because nothing (grpc, rich, yaml, the generated
modules) is imported before a command needs it.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from rune.cli.errors import EXIT_ERROR, EXIT_USAGE, CliError, exit_table_text
from rune.cli.persistent import install

# name -> (module under rune.cli.commands, attribute, one-line help). Aliases point at the same entry.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "login": ("auth", "login", "Log in to a runed: save and select a context (token verified with WhoAmI)."),
    "whoami": ("auth", "whoami", "Show who the current token belongs to."),
    "config": ("auth", "config", "View and edit CLI contexts."),
    "use-context": ("auth", "use_context", "Select the current context."),
    "cast": ("cast", "cast", "Apply cast files, directories or runesets (alias: apply)."),
    "lint": ("cast", "lint", "Check cast files without contacting runed."),
    "pack": ("cast", "pack", "Pack a runeset directory into a .runeset.tgz archive."),
    "get": ("get", "get", "List or show services, instances, namespaces, secrets, configmaps."),
    "describe": ("describe", "describe", "Show one object in full, with its instances and recent events."),
    "logs": ("logs", "logs", "Print (and follow) the logs of a service or instance (alias: log)."),
    "events": ("events", "events", "Lifecycle events of services and instances (follow with -f)."),
    "exec": ("exec", "exec_", "Run a command in a running instance (alias: e)."),
    "scale": ("scale", "scale", "Change a service's scale and watch it converge."),
    "stop": ("scale", "stop", "Scale a service to zero."),
    "restart": ("scale", "restart", "Restart a service's instances."),
    "rollback": ("scale", "rollback", "Roll a service back to an earlier revision."),
    "history": ("scale", "history", "Show a service's revisions."),
    "delete": ("delete", "delete", "Delete a service (or secret, configmap, namespace); list/status of deletions."),
    "create": ("create", "create", "Create a secret, configmap or namespace."),
    "cordon": ("nodes", "cordon", "Place no new instances on a node."),
    "uncordon": ("nodes", "uncordon", "Let a node take new instances again (ends a drain)."),
    "drain": ("nodes", "drain", "Move a node's instances to other nodes, respecting readiness, and cordon it."),
    "status": ("status", "status", "Summary of services and instances per namespace."),
    "health": ("status", "health", "Health of the API server, services, instances or the node."),
    "version": ("status", "version", "Client and server versions."),
    "deps": ("deps", "deps", "Validate or draw service dependencies."),
    "admin": ("admin", "admin", "Bootstrap, tokens, users, policies, registries, audit."),
    "completion": ("completion", "completion", "Print a shell completion script (bash, zsh, fish)."),
}
ALIASES = {"apply": "cast", "log": "logs", "e": "exec", "remove": "delete", "rm": "delete"}

EPILOG = (
    "\b\nExit codes:\n"
    + exit_table_text()
    + "\n  rune exec exits with the remote command's status.\n\b\n"
    + "Environment: RUNE_SERVER (address), RUNE_TOKEN (token fallback), RUNE_CLI_CONFIG (contexts file)."
)


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command is resolved."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        name = ALIASES.get(cmd_name, cmd_name)
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        cmd: click.Command = getattr(importlib.import_module(f"rune.cli.commands.{module}"), attr)
        # --api-server, -n, --config, ... are accepted after the command's name as well as before it.
        return install(cmd)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Listing help from the table avoids importing every command module for `rune --help`.
        rows = [(name, short) for name, (_, _, short) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="CLI contexts file.")
@click.option("--server", "--api-server", "server", help="runed gRPC address host:port (env RUNE_SERVER).")
@click.option("--context", "context_name", help="Use this context instead of the current one.")
@click.option("-n", "--namespace", "namespace", help="Namespace (default: the context's, else default).")
@click.option("--tls/--no-tls", default=None, help="Use TLS (default: the context's setting).")
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False), help="CA bundle for TLS.")
@click.option("--timeout", "call_timeout", type=float, default=30.0, show_default=True, help="Per-call timeout (s).")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks and call details.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warn", "error"]), default="warn", hidden=True)
@click.version_option(package_name="runed", prog_name="rune", message="%(prog)s client %(version)s")
@click.pass_context
def cli(
    ctx: click.Context,
    config_path: str | None,
    server: str | None,
    context_name: str | None,
    namespace: str | None,
    tls: bool | None,
    ca_file: str | None,
    call_timeout: float,
    verbose: bool,
    log_level: str,
) -> None:
    """rune: drive a runed control plane (services, instances, secrets, logs, exec)."""
    from pathlib import Path

    from rune.cli.client import Session

    ctx.obj = Session(
        config_path=Path(config_path).expanduser() if config_path else None,
        server_flag=server,
        context_flag=context_name,
        namespace_flag=namespace,
        tls_flag=tls,
        ca_file_flag=ca_file,
        timeout=call_timeout,
        verbose=verbose,
    )
    ctx.call_on_close(ctx.obj.close)


def _target_of(ctx_obj: Any) -> str:
    try:
        return str(ctx_obj.target)
    except Exception:
        return "localhost:7863"


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: one clear error line and a meaningful exit code, never a traceback."""
    if os.environ.get("_RUNE_COMPLETE"):
        # Shell completion requests are answered by click itself.
        cli.main(prog_name="rune", complete_var="_RUNE_COMPLETE")
    verbose = os.environ.get("RUNE_DEBUG") == "1" or "-v" in (argv or sys.argv[1:]) or "--verbose" in sys.argv
    session: list[Any] = []
    try:
        with cli.make_context("rune", list(argv if argv is not None else sys.argv[1:])) as ctx:
            session.append(ctx)
            cli.invoke(ctx)
        sys.exit(0)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        sys.stderr.write("aborted\n")
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(EXIT_USAGE if isinstance(e, click.UsageError) else e.exit_code)
    except CliError as e:
        sys.stderr.write(f"error: {e.message}\n")
        sys.exit(e.code)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except BrokenPipeError:
        # Output piped into `head` and closed early: not an error worth a message.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except SystemExit:
        raise
    except Exception as e:
        grpc_mod = sys.modules.get("grpc")
        if grpc_mod is not None and isinstance(e, grpc_mod.RpcError) and hasattr(e, "code"):
            from rune.cli.errors import render_rpc_error

            line, code = render_rpc_error(e, _target_of(session[0].obj if session else None))
            sys.stderr.write(f"error: {line}\n")
            sys.exit(code)
        if verbose:
            raise
        sys.stderr.write(f"error: {type(e).__name__}: {e} (run with -v for details)\n")
        sys.exit(EXIT_ERROR)
