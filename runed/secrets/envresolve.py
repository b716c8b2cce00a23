"""An instance's computed environment and mount files (reference §2.3), resolved on demand only.

The stored instance keeps secret references unresolved (``{{secret:name/key}}``); values are
decrypted here, in memory, right before a start and never written to the store.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rune.api import service_pb2
from runed.core import errors, filemodes
from runed.core.names import DEFAULT_NAMESPACE
from runed.secrets.access import CONFIGMAP_KIND, SECRET_KIND, configmap_values, decrypt_record
from runed.store.base import Reader, Record

ENV_KEY = re.compile(r"^[A-Z_][A-Z0-9_]*$")
TEMPLATE = re.compile(r"\{\{\s*(secret|configmap)\s*:\s*([^}]*?)\s*\}\}")
# Where process instances reach each other: they listen on the node's own addresses, and the
# loopback one is reachable from every process instance on the node (``Instance.ip`` says the same).
NODE_ADDRESS = "127.0.0.1"
# The instance's environment variable naming the directory its mounts are placed under.
MOUNTS_DIR_ENV = "RUNE_MOUNTS_DIR"


class ResolveError(Exception):
    """A referenced secret/configmap (or key) is missing: the instance cannot start yet."""


def _secret_ref(name: str, key: str) -> str:
    """The stored stand-in for a secret value: the template that resolves to it."""
    return "{{secret:" + name + "/" + key + "}}"


def _upper(name: str) -> str:
    return re.sub(r"[^A-Z0-9_]", "_", name.upper().replace("-", "_"))


def port_env(key: str) -> str:
    """The variable that tells an instance the host port of its declared port ``key`` (its name,
    else its number): ``RUNE_PORT_<KEY>``."""
    return f"RUNE_PORT_{_upper(key)}"


# Decoded secret and configmap data by (kind, namespace, name): shareable by the resolutions of one
# pass, so a secret that a thousand starting instances refer to is decrypted once, not a thousand times.
Decoded = dict[tuple[str, str, str], dict[str, str]]


def _target(ref: str, namespace: str) -> tuple[str, str, str]:
    """A template's ``name/key`` (or ``name.ns.rune/key``, the FQDN form) as (namespace, name, key)."""
    name, sep, key = ref.partition("/")
    if not sep or not key:
        return namespace, name, ""
    ns = namespace
    if name.endswith(".rune") and name.count(".") >= 2:
        name, ns = name[: -len(".rune")].rsplit(".", 1)
    return ns, name, key


def references(svc: service_pb2.Service) -> set[tuple[str, str, str]]:
    """The secrets and configmaps an instance's environment and mounts are computed from, as
    (kind, namespace, name): what a start reads, so it can be read in advance."""
    ns = svc.namespace or DEFAULT_NAMESPACE
    out = _env_references(svc)
    out.update((SECRET_KIND, ns, m.secret_name or m.name) for m in svc.secret_mounts)
    out.update((CONFIGMAP_KIND, ns, m.configmap_name or m.name) for m in svc.configmap_mounts)
    return out


def env_has_secrets(svc: service_pb2.Service) -> bool:
    """Whether the environment takes values from secrets (else its stored form is the one the instance gets)."""
    return any(kind == SECRET_KIND for kind, _, _ in _env_references(svc))


def _env_from_source(ef: service_pb2.EnvFromSource) -> tuple[str, str]:
    """What an envFrom entry imports: (kind, name); a secret when it names one."""
    return (SECRET_KIND, ef.secret_name) if ef.secret_name else (CONFIGMAP_KIND, ef.configmap_name)


def _env_references(svc: service_pb2.Service) -> set[tuple[str, str, str]]:
    """The secrets and configmaps of the environment alone (envFrom and templates in env values)."""
    ns = svc.namespace or DEFAULT_NAMESPACE
    out: set[tuple[str, str, str]] = set()
    for ef in svc.env_from:
        kind, name = _env_from_source(ef)
        out.add((kind, ef.namespace or ns, name))
    for v in svc.env.values():
        for m in TEMPLATE.finditer(v):
            tns, name, _ = _target(m.group(2), ns)
            out.add((m.group(1), tns, name))
    return out


@dataclass
class Sources:
    """Reads secrets and configmaps for one resolution through ``reader`` (the store, or records read
    in advance), decoding (decrypting) each at most once per ``decoded`` map."""

    reader: Reader
    crypto: Any
    namespace: str
    reveal: bool  # False: secret values stay as their template reference
    decoded: Decoded = field(default_factory=dict)

    def data(self, kind: str, ns: str, name: str) -> dict[str, str]:
        if kind == SECRET_KIND and not self.reveal:
            rec = self._record(kind, ns, name)
            return {str(k): self._reference(ns, name, str(k)) for k in rec.data.get("keys") or []}
        key = (kind, ns, name)
        if key not in self.decoded:
            rec = self._record(kind, ns, name)
            try:
                self.decoded[key] = (
                    decrypt_record(self.crypto, rec.data) if kind == SECRET_KIND else configmap_values(rec.data)
                )
            except errors.RuneError as e:
                raise ResolveError(e.message) from None
        return self.decoded[key]

    def _reference(self, ns: str, name: str, key: str) -> str:
        """The stored form of a secret value: its template, naming another namespace in the FQDN form."""
        return _secret_ref(name if ns == self.namespace else f"{name}.{ns}.rune", key)

    def _record(self, kind: str, ns: str, name: str) -> Record:
        rec = self.reader.get(kind, ns, name)
        if rec is None:
            raise ResolveError(f'{kind} "{name}" not found in namespace "{ns}"')
        return rec

    def lookup(self, kind: str, ref: str) -> str:
        ns, name, key = _target(ref, self.namespace)
        if not key:
            raise ResolveError(f"template {{{{{kind}:{ref}}}}} needs a key (name/key)")
        if kind == SECRET_KIND and not self.reveal:
            self._record(kind, ns, name)  # still checks that it exists
            return self._reference(ns, name, key)
        values = self.data(kind, ns, name)
        if key not in values:
            raise ResolveError(f'{kind} "{name}" in namespace "{ns}" has no key "{key}"')
        return values[key]


@dataclass(frozen=True)
class Endpoint:
    """Where a service answers: a reachable host and its host ports, in the order the spec declares them."""

    service: str
    host: str
    ports: Sequence[tuple[str, int]]  # (port name, or its number when unnamed; host port)


def endpoint_env(ep: Endpoint) -> dict[str, str]:
    """Kubernetes-style ``<SVC>_SERVICE_HOST``, ``<SVC>_SERVICE_PORT`` (first port), ``<SVC>_SERVICE_PORT_<NAME>``."""
    up = _upper(ep.service)
    env = {f"{up}_SERVICE_HOST": ep.host}
    for i, (name, port) in enumerate(ep.ports):
        if i == 0:
            env[f"{up}_SERVICE_PORT"] = str(port)
        env[f"{up}_SERVICE_PORT_{_upper(name)}"] = str(port)
    return env


def compute_env(
    reader: Reader,
    crypto: Any,
    svc: service_pb2.Service,
    *,
    instance_id: str,
    instance_name: str,
    ports: dict[str, int],
    reveal: bool,
    dependencies: Sequence[Endpoint] = (),
    mounts_dir: str = "",
    decoded: Decoded | None = None,
) -> dict[str, str]:
    """envFrom imports, then service env with templates, then the built-ins (later wins).

    The built-ins name the instance, its own service's endpoint and those of the services it
    depends on (``dependencies``), and ``mounts_dir`` when the instance has mounts there.
    ``reveal`` False gives the form that may be stored: secret values as references. ``decoded``:
    secret and configmap data already decoded (and filled in here), shared between resolutions.
    """
    ns = svc.namespace or DEFAULT_NAMESPACE
    src = Sources(reader, crypto, ns, reveal, {} if decoded is None else decoded)
    env: dict[str, str] = {}
    for ef in svc.env_from:
        kind, name = _env_from_source(ef)
        for k, v in src.data(kind, ef.namespace or ns, name).items():
            key = ef.prefix + k
            if ENV_KEY.match(key):
                env[key] = v
    for k, v in svc.env.items():
        env[k] = TEMPLATE.sub(lambda m: src.lookup(m.group(1), m.group(2)), v)
    env["RUNE_SERVICE_NAME"] = svc.name
    env["RUNE_SERVICE_NAMESPACE"] = ns
    env["RUNE_INSTANCE_ID"] = instance_id
    env["RUNE_INSTANCE_NAME"] = instance_name
    if mounts_dir:
        env[MOUNTS_DIR_ENV] = mounts_dir
    # Dependencies first: the instance's own service wins a clash of names (same name, other namespace).
    for dep in dependencies:
        env.update(endpoint_env(dep))
    own: list[tuple[str, int]] = []
    for p in svc.ports:
        key = p.name or str(p.port)
        if key in ports:
            own.append((key, ports[key]))
            env[port_env(key)] = str(ports[key])
    if own:
        env["PORT"] = str(own[0][1])
    env.update(endpoint_env(Endpoint(svc.name, NODE_ADDRESS, own)))
    return env


@dataclass
class MountFile:
    """One file of a secret or configmap mount; ``shared`` when it is at a host path (not the instance's)."""

    path: Path
    content: bytes
    mode: int
    shared: bool = False


def mount_dir(mount_path: str, root: Path, host_paths: Sequence[str] = ()) -> tuple[Path, bool]:
    """Where a mount's files go, and whether that is a shared host path.

    A mount path is the path the instance sees, as in a container: a process instance has no
    filesystem of its own, so the path is placed under ``root`` (the instance's own directory).
    Only a path under one of ``host_paths`` (the operator's ``controller.host_mount_paths``) is
    written on the host as it is, shared by every instance that mounts it.
    """
    rel = os.path.normpath("/" + mount_path.lstrip("/")).lstrip("/")
    host = Path("/", rel)
    if any(host.is_relative_to(os.path.normpath(allowed)) for allowed in host_paths if allowed.startswith("/")):
        return host, True
    return root / rel, False


def mount_files(
    reader: Reader,
    crypto: Any,
    svc: service_pb2.Service,
    root: Path,
    host_paths: Sequence[str] = (),
    decoded: Decoded | None = None,
) -> list[MountFile]:
    """Files for secret (0400) and configmap (0444) mounts, placed by :func:`mount_dir`."""
    ns = svc.namespace or DEFAULT_NAMESPACE
    src = Sources(reader, crypto, ns, True, {} if decoded is None else decoded)
    out: list[MountFile] = []
    mounts: list[tuple[str, Any, int]] = [("secret", m, 0o400) for m in svc.secret_mounts]
    mounts += [("configmap", m, 0o444) for m in svc.configmap_mounts]
    for kind, m, mode in mounts:
        source = (m.secret_name if kind == "secret" else m.configmap_name) or m.name
        data = src.data(kind, ns, source)
        base, shared = mount_dir(m.mount_path, root, host_paths)
        items = {it.key: it.path for it in m.items}
        for key, value in data.items():
            rel = items.get(key, key)
            target = Path(os.path.normpath(base / rel))
            if not target.is_relative_to(base) or target == base:
                raise ResolveError(f"mount {m.name}: item path {rel!r} escapes the mount path")
            out.append(MountFile(target, value.encode(), mode, shared))
    return out


def write_mounts(files: list[MountFile], uid: int | None, gid: int | None) -> None:
    """Write mount files (owned by the instance's user); a file that exists is replaced."""
    for f in files:
        filemodes.instance_dirs(f.path.parent)
        if f.path.exists():
            os.chmod(f.path, 0o600)
        fd = os.open(f.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, f.content)
        finally:
            os.close(fd)
        if uid is not None:
            os.chown(f.path, uid, gid if gid is not None else -1)
        os.chmod(f.path, f.mode)
