"""Flags every command accepts, before or after its name: ``rune get services --api-server host:7863 -n prod``.

Upstream's per-command ``--api-server``/``-n`` and cobra's persistent flags (``--config``, ``-v``) work wherever they
are written; here the root group owns them and :func:`install` gives each command (and each subcommand of a group)
a copy whose value is merged into the :class:`~rune.cli.client.Session` the root made. A command's own option of
the same name wins (``login --server``, ``get -n`` keep their meaning); only the names it does not define are added.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from rune.cli.client import Session

_INSTALLED = "_rune_persistent_installed"


def _into(
    attr: str, convert: Callable[[Any], Any] = lambda v: v
) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        if value is None or value is False:
            return value
        session = ctx.find_object(Session)
        if session is not None:
            setattr(session, attr, convert(value))
            if attr == "config_path":
                session._config = None
        return value

    return callback


def _expand(value: str) -> Path:
    return Path(value).expanduser()


# (flag names, option settings): the same flags as the root group's, as the Session field they set.
_SPECS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("--server", "--api-server"), {"callback": _into("server_flag"), "help": "runed gRPC address host:port."}),
    (("-n", "--namespace"), {"callback": _into("namespace_flag"), "help": "Namespace (default: the context's)."}),
    (("--config",), {"callback": _into("config_path", _expand), "type": click.Path(dir_okay=False), "hidden": True}),
    (("--context",), {"callback": _into("context_flag"), "hidden": True}),
    (("--tls/--no-tls",), {"callback": _into("tls_flag"), "default": None, "hidden": True}),
    (
        ("--ca-file",),
        {"callback": _into("ca_file_flag"), "type": click.Path(exists=True, dir_okay=False), "hidden": True},
    ),
    (("-v", "--verbose"), {"callback": _into("verbose"), "is_flag": True, "default": False, "hidden": True}),
    (("--log-level",), {"type": click.Choice(["debug", "info", "warn", "error"]), "hidden": True}),
]


def _taken(cmd: click.Command) -> set[str]:
    names: set[str] = set()
    for p in cmd.params:
        names.update(p.opts)
        names.update(getattr(p, "secondary_opts", []))
    return names


def _free_decls(decls: tuple[str, ...], taken: set[str]) -> list[str]:
    """The declarations whose names ``taken`` does not hold (a ``--on/--off`` pair only whole)."""
    out: list[str] = []
    for d in decls:
        if "/" in d:
            if not set(d.split("/")) & taken:
                out.append(d)
        elif d not in taken:
            out.append(d)
    return out


def install(cmd: click.Command) -> click.Command:
    """Give ``cmd`` (and, for a group, every subcommand) the persistent flags it does not define itself."""
    if getattr(cmd, _INSTALLED, False):
        return cmd
    setattr(cmd, _INSTALLED, True)
    taken = _taken(cmd)
    for decls, settings in _SPECS:
        free = _free_decls(decls, taken)
        if not free:
            continue
        key = "persistent_" + decls[-1].split("/")[0].lstrip("-").replace("-", "_")
        cmd.params.append(click.Option([key, *free], expose_value=False, **settings))
    if isinstance(cmd, click.Group):
        for sub in cmd.commands.values():
            install(sub)
    return cmd
