"""Building what a runner starts: argv, environment, mounts, ports, user and working directory."""

from __future__ import annotations

import contextlib
import functools
import grp
import json
import os
import pwd
import re
import shlex
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

from rune.api import common_pb2, service_pb2
from runed.controller.instance import Instance
from runed.controller.states import ACTIVE, RUNNING
from runed.core import filemodes, quantity
from runed.core.config import ControllerConfig
from runed.model import objects
from runed.runner.base import LaunchSpec, RunnerError
from runed.secrets import envresolve
from runed.secrets.crypto import SecretCrypto
from runed.store.base import Reader

# Variables of runed's own environment an instance inherits; everything else comes from the spec.
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER", "LOGNAME", "SHELL")
# In an instance's directory: its secret and configmap mounts, and the list of the ones it wrote
# at shared host paths (controller.host_mount_paths), so a restarted controller can remove them.
MOUNTS_NAME = "mounts"
HOST_MOUNTS_NAME = "host-mounts.json"

# The instances of a service (namespace, name): this node's (the controller's book), or on every node.
Peers = Callable[[str, str], list[Instance]]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_available(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As servers bind: a port left in TIME_WAIT by the previous run is still usable.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@functools.cache
def _inherited_env() -> dict[str, str]:
    return {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}


def inherited_env() -> dict[str, str]:
    """What every instance gets of runed's own environment (read once: runed never changes its own)."""
    return dict(_inherited_env())


def port_key(p: common_pb2.ServicePort) -> str:
    """How an instance's ports (and ``RUNE_PORT_<NAME>``) name a declared port: its name, else its number."""
    return p.name or str(p.port)


def fixed_port(svc: service_pb2.Service) -> tuple[str, int] | None:
    """The declared port ``expose.host_port`` binds (``expose.port``, else the first) and that host port."""
    if not svc.expose.host_port:
        return None
    for p in svc.ports:
        if not svc.expose.port or svc.expose.port in (p.name, str(p.port)):
            return port_key(p), int(svc.expose.host_port)
    return None


def new_ports(svc: service_pb2.Service) -> dict[str, int]:
    """A host port for every declared port, named by :func:`port_key`: ``expose.host_port`` or a free one."""
    fixed = fixed_port(svc)
    ports = {port_key(p): free_port() for p in svc.ports}
    if fixed is not None:
        ports[fixed[0]] = fixed[1]
    return ports


def argv(svc: service_pb2.Service) -> list[str]:
    if svc.process.command:
        return [svc.process.command, *svc.process.args]
    if svc.command:
        return [*shlex.split(svc.command), *svc.args]
    return list(svc.args)


# ``$(NAME)`` in a command or its arguments, or its escape ``$$(``.
_VAR_REF = re.compile(r"\$\$\(|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' ``$(NAME)`` in a command and its arguments: the variable's value from ``env``
    (``args: ["-m", "http.server", "$(PORT)"]`` listens where the instance is told to, without a
    shell). A name ``env`` does not have stays as written, and ``$$(`` is a literal ``$(``; any
    other ``$`` is left alone, so a shell script's ``$$`` or ``$VAR`` means what it meant."""

    def one(m: re.Match[str]) -> str:
        if m.group(1) is None:
            return "$("
        return env.get(m.group(1), m.group(0))

    return [_VAR_REF.sub(one, a) for a in args]


def user_ids(sc: common_pb2.ProcessSecurityContext) -> tuple[int | None, int | None]:
    """The uid and gid to run as; only root can switch users, so otherwise both are None."""
    uid: int | None = None
    gid: int | None = None
    if os.geteuid() == 0 and (sc.user or sc.group):
        try:
            if sc.user:
                pw = pwd.getpwnam(sc.user) if not sc.user.isdigit() else pwd.getpwuid(int(sc.user))
                uid, gid = pw.pw_uid, pw.pw_gid
            if sc.group:
                gid = grp.getgrnam(sc.group).gr_gid if not sc.group.isdigit() else int(sc.group)
        except KeyError as e:
            raise RunnerError(f"security context: unknown user or group {e}", fatal=True) from None
    return uid, gid


class StartInput:
    """What starts read from the store, read before them (off the event loop on PostgreSQL, see
    :mod:`runed.controller.passinput`), with what is derived from it once for all of them: service
    specs parsed, secrets and configmaps decoded. One per pass: a cast of a thousand instances reads
    and decrypts its secrets once, while ports and names stay each instance's own."""

    def __init__(self, records: Reader) -> None:
        self.records = records
        self.decoded: envresolve.Decoded = {}
        self._specs: dict[tuple[str, str], service_pb2.Service | None] = {}
        self._hashes: dict[tuple[str, str], str] = {}

    def service(self, namespace: str, name: str) -> service_pb2.Service | None:
        key = (namespace, name)
        if key not in self._specs:
            rec = self.records.get(objects.SERVICE, namespace, name)
            self._specs[key] = None if rec is None else objects.service_from_record(rec)
        return self._specs[key]

    def spec_hash(self, svc: service_pb2.Service) -> str:
        """:func:`objects.spec_hash` of a spec from :meth:`service`."""
        key = (svc.namespace, svc.name)
        if key not in self._hashes:
            self._hashes[key] = objects.spec_hash(svc)
        return self._hashes[key]


def references(svc: service_pb2.Service) -> set[tuple[str, str, str]]:
    """The records a start of ``svc``'s instances reads (kind, namespace, name): the services it
    depends on (their endpoints), the secrets and configmaps of its environment and mounts."""
    ns = svc.namespace
    deps = {(objects.SERVICE, d.namespace or ns, d.service) for d in svc.dependencies if d.service}
    return deps | envresolve.references(svc)


class Launcher:
    """Turns a service spec and an instance into a :class:`LaunchSpec`, resolving secrets and configmaps."""

    def __init__(
        self,
        crypto: SecretCrypto | None,
        cfg: ControllerConfig,
        peers: Peers,
        everywhere: Peers | None = None,
    ) -> None:
        self.crypto = crypto
        self.cfg = cfg
        self.peers = peers
        # A dependency may run on other nodes: its endpoint is looked for on every one.
        self.everywhere = everywhere or peers

    def spec(self, inst: Instance, svc: service_pb2.Service, given: StartInput) -> LaunchSpec:
        """The launch of ``inst``, from the records ``given`` (nothing is read here); records on it what
        its record shows (ports, env with references unresolved, uid/gid, working directory).
        Raises ResolveError, RunnerError or OSError."""
        d = Path(inst.log_dir)
        inst.ports = ports = self.ports(inst, svc)
        stored = self.env(inst, svc, ports, given, reveal=False)
        secret = envresolve.env_has_secrets(svc)
        env = self.env(inst, svc, ports, given, reveal=True) if secret else dict(stored)
        inst.env = stored
        uid, gid = user_ids(svc.process.security_context)
        inst.uid, inst.gid = uid, gid
        workdir = Path(svc.process.working_dir or d / "work")
        d.mkdir(parents=True, exist_ok=True)  # runed's own: private
        filemodes.instance_dirs(workdir)
        if uid is not None:
            os.chown(workdir, uid, gid if gid is not None else -1)
            if uid != os.geteuid():
                # runed's directories are private: the instance's user may pass through the instance
                # dir, instances/ and the data dir to its working dir and mounts (search only).
                filemodes.allow_search(d, parents=2)
        inst.workdir = str(workdir)
        self.mount(inst, svc, uid, gid, given)
        return LaunchSpec(
            instance_id=inst.id,
            namespace=inst.namespace,
            name=inst.name,
            service=svc.name,
            directory=d,
            # Variables whose values come from secrets are not expanded: a command line is visible
            # to every user of the host, and launch.json keeps it on disk.
            argv=expand(argv(svc), {k: v for k, v in stored.items() if env.get(k) == v}),
            env={**inherited_env(), **env},
            cwd=str(workdir),
            image=svc.image,
            uid=uid,
            gid=gid,
            rlimit_as=quantity.memory_limit(svc.resources.memory.limit),
            ports=ports,
            log_max_bytes=self.cfg.log_max_bytes,
            log_backups=self.cfg.log_backups,
            log_min_free_bytes=self.cfg.log_min_free_bytes,
        )

    def ports(self, inst: Instance, svc: service_pb2.Service) -> dict[str, int]:
        """Host ports for this start: ``expose.host_port`` for the port it exposes, else the ports of
        the last start (clients keep their address) unless someone else took one, else free ones."""
        fixed = fixed_port(svc)
        if fixed is not None and not port_available(fixed[1]):
            raise RunnerError(f"host port {fixed[1]} (service.expose.host_port) is in use on this node")
        ports: dict[str, int] = {}
        for p in svc.ports:
            key = port_key(p)
            if fixed is not None and key == fixed[0]:
                ports[key] = fixed[1]
            else:
                old = inst.ports.get(key)
                ports[key] = old if old and port_available(old) else free_port()
        return ports

    def env(
        self, inst: Instance, svc: service_pb2.Service, ports: dict[str, int], given: StartInput, *, reveal: bool
    ) -> dict[str, str]:
        """The spec's environment for ``inst``; ``reveal`` resolves secret references (never stored)."""
        has_mounts = bool(svc.secret_mounts or svc.configmap_mounts)
        return envresolve.compute_env(
            given.records,
            self.crypto,
            svc,
            instance_id=inst.id,
            instance_name=inst.name,
            ports=ports,
            reveal=reveal,
            dependencies=self.dependencies(svc, given),
            mounts_dir=mounts_root(inst) if has_mounts else "",
            decoded=given.decoded,
        )

    def dependencies(self, svc: service_pb2.Service, given: StartInput) -> list[envresolve.Endpoint]:
        """Where each dependency service answers: the host ports of one of its instances (a ready one
        first, then one on this node, the lowest index first; ``expose.host_port`` is the same for
        all) and its address: the loopback one on this node, else its node's address."""
        out: list[envresolve.Endpoint] = []
        for dep in svc.dependencies:
            if not dep.service:
                continue
            dns = dep.namespace or svc.namespace
            dsvc = given.service(dns, dep.service)
            if dsvc is None:
                continue
            here = {i.key for i in self.peers(dns, dep.service)}
            candidates = [i for i in self.everywhere(dns, dep.service) if not i.retire and i.ports]
            best = min(
                candidates,
                key=lambda i: (
                    not (i.state is RUNNING and i.ready),
                    i.state not in ACTIVE,
                    i.key not in here,
                    i.index,
                    i.created_at,
                ),
                default=None,
            )
            ports = dict(best.ports) if best is not None else {}
            host = best.ip if best is not None and best.key not in here else envresolve.NODE_ADDRESS
            fixed = fixed_port(dsvc)
            if fixed is not None:
                ports[fixed[0]] = fixed[1]
            ordered = [(port_key(p), ports[port_key(p)]) for p in dsvc.ports if port_key(p) in ports]
            out.append(envresolve.Endpoint(dep.service, host, ordered))
        return out

    # -- mounts -----------------------------------------------------------------------------------
    def mount(
        self, inst: Instance, svc: service_pb2.Service, uid: int | None, gid: int | None, given: StartInput
    ) -> None:
        """Write the instance's secret and configmap mounts afresh (what a previous start left goes first)."""
        self.release(inst, shared=False)
        if not (svc.secret_mounts or svc.configmap_mounts):
            return
        root = Path(mounts_root(inst))
        files = envresolve.mount_files(given.records, self.crypto, svc, root, self.cfg.host_mount_paths, given.decoded)
        # Only the instance's user may even list its mounts.
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if uid is not None:
            os.chown(root, uid, gid if gid is not None else -1)
        # Recorded before they are written, with what earlier starts wrote, so every one is removed.
        shared = {str(f.path) for f in files if f.shared}
        if shared:
            record = Path(inst.log_dir) / HOST_MOUNTS_NAME
            record.write_text(json.dumps(sorted(shared | set(_recorded(record)))))
        try:
            envresolve.write_mounts(files, uid, gid)
        except OSError:
            self.release(inst)
            raise

    def release(self, inst: Instance, *, shared: bool = True, leaving: bool = False) -> None:
        """Remove the instance's mount files: it no longer runs, so its secrets leave the disk.

        Files at shared host paths go too (``shared``) unless another instance of the service still
        runs and may read them; the last one to stop removes them.

        ``leaving``: the instance's directory is removed next, with all in it. An instance whose last
        start wrote no mounts (its environment names no mounts directory) then needs no look at the
        disk: the two lookups were a tenth of a deletion's controller time (bench/README.md, "the
        path to the deleted service").
        """
        if leaving and envresolve.MOUNTS_DIR_ENV not in inst.env:
            return
        # Plain strings, not Paths: a deletion of a thousand instances releases each of them.
        root = mounts_root(inst)
        if os.path.isdir(root):
            shutil.rmtree(root, ignore_errors=True)
        if not shared or not os.path.exists(os.path.join(inst.log_dir, HOST_MOUNTS_NAME)):
            return
        record = Path(inst.log_dir) / HOST_MOUNTS_NAME
        others = [i for i in self.peers(inst.namespace, inst.service) if i.key != inst.key and i.state in ACTIVE]
        if others:
            return
        for path in _recorded(record):
            with contextlib.suppress(OSError):
                os.unlink(path)
        record.unlink(missing_ok=True)


def mounts_root(inst: Instance) -> str:
    """The directory an instance's mounts are placed under (``RUNE_MOUNTS_DIR``)."""
    return os.path.join(inst.log_dir, MOUNTS_NAME)


def _recorded(record: Path) -> list[str]:
    """The shared host-path mount files an instance wrote (none when the record is absent or unreadable)."""
    try:
        return [str(p) for p in json.loads(record.read_text())]
    except (OSError, ValueError, TypeError):
        return []
