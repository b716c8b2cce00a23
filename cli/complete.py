"""Shell completion of object names: ``rune logs <TAB>``, ``rune get secret <TAB>``, ``rune scale <TAB>``.

click asks a NAME argument's ``shell_complete`` while the shell waits. The names come from runed (the same
address, token and namespace the command would use) with a short deadline; when runed cannot answer, the
completion is empty: never an error, never a message, never a wait longer than :data:`TIMEOUT`.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
from click.shell_completion import CompletionItem

# Seconds a completion waits for runed.
TIMEOUT = 2.0

# Parameter names (the root group's and the persistent copies') -> Session field.
_SESSION_PARAMS = {
    "server": "server_flag",
    "namespace": "namespace_flag",
    "config_path": "config_path",
    "config": "config_path",
    "context_name": "context_flag",
    "context": "context_flag",
    "tls": "tls_flag",
    "ca_file": "ca_file_flag",
}

# Type words (``get``/``describe``/``delete``'s TYPE) -> the kind whose names complete.
_KIND_OF = {
    "services": "services", "service": "services", "svc": "services",
    "instances": "instances", "instance": "instances", "inst": "instances",
    "namespaces": "namespaces", "namespace": "namespaces", "ns": "namespaces",
    "secrets": "secrets", "secret": "secrets",
    "configmaps": "configmaps", "configmap": "configmaps", "config": "configmaps", "configs": "configmaps",
    "cfg": "configmaps", "cm": "configmaps",
}  # fmt: skip


def _chain(ctx: click.Context) -> Iterator[click.Context]:
    """The contexts from the root down to ``ctx``."""
    out: list[click.Context] = []
    cur: click.Context | None = ctx
    while cur is not None:
        out.append(cur)
        cur = cur.parent
    return reversed(out)


def _session(ctx: click.Context) -> Any:
    """The Session the command would get: flags before and after its name (the command's own win)."""
    from rune.cli.client import Session

    fields: dict[str, Any] = {}
    for c in _chain(ctx):
        for name, value in c.params.items():
            attr = _SESSION_PARAMS.get(name)
            if attr is None or value is None or (value is False and attr != "tls_flag"):
                continue
            fields[attr] = Path(value).expanduser() if attr == "config_path" else value
    return Session(timeout=TIMEOUT, **fields)


def _names(s: Any, kind: str, ns: str) -> list[tuple[str, str]]:
    """(name, help) of the objects of ``kind`` in ``ns`` (first page)."""
    from rune.cli.client import pb2

    if kind == "services":
        resp = s.call("ServiceService", "ListServices", pb2("service").ListServicesRequest(namespace=ns))
        return [(x.name, "service") for x in resp.services]
    if kind == "instances":
        resp = s.call("InstanceService", "ListInstances", pb2("instance").ListInstancesRequest(namespace=ns))
        return [(x.name, f"instance of {x.service_name}") for x in resp.instances]
    if kind == "namespaces":
        resp = s.call("NamespaceService", "ListNamespaces", pb2("namespace").ListNamespacesRequest())
        return [(x.name, "namespace") for x in resp.namespaces]
    if kind == "secrets":
        resp = s.call("SecretService", "ListSecrets", pb2("secret").ListSecretsRequest(namespace=ns))
        return [(x.name, "secret") for x in resp.secrets]
    if kind == "configmaps":
        resp = s.call("ConfigmapService", "ListConfigmaps", pb2("configmap").ListConfigmapsRequest(namespace=ns))
        return [(x.name, "configmap") for x in resp.configmaps]
    return []


def _complete(ctx: click.Context, kinds: list[str], incomplete: str) -> list[CompletionItem]:
    seen: set[str] = set()
    out: list[CompletionItem] = []
    try:
        # Nothing reaches the terminal while the shell waits (e.g. the plaintext-token warning).
        with contextlib.redirect_stderr(io.StringIO()):
            s = _session(ctx)
            try:
                ns = s.namespace()
                for kind in kinds:
                    for name, what in sorted(_names(s, kind, ns)):
                        if name.startswith(incomplete) and name not in seen:
                            seen.add(name)
                            out.append(CompletionItem(name, help=what))
            finally:
                s.close()
    except Exception:
        # runed unreachable, a bad token, no context: complete nothing rather than fail.
        return out
    return out


def names_of(*kinds: str) -> Callable[[click.Context, click.Parameter, str], list[CompletionItem]]:
    """A ``shell_complete`` for an argument naming objects of ``kinds`` (``"services"``, ``"instances"``, ...)."""

    def shell_complete(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
        return _complete(ctx, list(kinds), incomplete)

    return shell_complete


def name_by_type(type_param: str) -> Callable[[click.Context, click.Parameter, str], list[CompletionItem]]:
    """A ``shell_complete`` for a NAME whose kind is the TYPE argument ``type_param`` before it."""

    def shell_complete(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
        kind = _KIND_OF.get(str(ctx.params.get(type_param) or "").lower())
        return _complete(ctx, [kind], incomplete) if kind else []

    return shell_complete


def delete_args(ctx: click.Context, _param: click.Parameter | click.Command, incomplete: str) -> list[CompletionItem]:
    """``rune delete [TYPE] NAME``: names of TYPE once it is given, else service names."""
    given = [a for a in (ctx.params.get("args") or ()) if a]
    if given:
        kind = _KIND_OF.get(given[0].lower())
        return _complete(ctx, [kind], incomplete) if kind and len(given) == 1 else []
    return _complete(ctx, ["services"], incomplete)
