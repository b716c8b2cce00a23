"""Building what a runner starts: argv, environment, mounts, ports, user and working directory."""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import socket
from pathlib import Path

from rune.api import common_pb2, service_pb2
from runed.controller.instance import Instance
from runed.core import quantity
from runed.core.config import ControllerConfig
from runed.runner.base import LaunchSpec, RunnerError
from runed.secrets import envresolve
from runed.secrets.crypto import SecretCrypto
from runed.store.base import Store

# Variables of runed's own environment an instance inherits; everything else comes from the spec.
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER", "LOGNAME", "SHELL")


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


def inherited_env() -> dict[str, str]:
    return {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}


def new_ports(svc: service_pb2.Service) -> dict[str, int]:
    """A free host port for every declared port, named by the port's name (or number)."""
    return {(p.name or str(p.port)): free_port() for p in svc.ports}


def argv(svc: service_pb2.Service) -> list[str]:
    if svc.process.command:
        return [svc.process.command, *svc.process.args]
    if svc.command:
        return [*shlex.split(svc.command), *svc.args]
    return list(svc.args)


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


class Launcher:
    """Turns a service spec and an instance into a :class:`LaunchSpec`, resolving secrets and configmaps."""

    def __init__(self, store: Store, crypto: SecretCrypto | None, cfg: ControllerConfig) -> None:
        self.store = store
        self.crypto = crypto
        self.cfg = cfg

    def spec(self, inst: Instance, svc: service_pb2.Service) -> LaunchSpec:
        """The launch of ``inst``; records on it what its record shows (ports, env with references
        unresolved, uid/gid, working directory). Raises ResolveError, RunnerError or OSError."""
        d = Path(inst.log_dir)
        # A restart keeps its host ports (clients keep their address) unless someone else took one.
        ports = {k: v for k, v in inst.ports.items() if port_available(int(v))}
        for p in svc.ports:
            ports.setdefault(p.name or str(p.port), free_port())
        inst.ports = ports
        stored = self.env(inst, svc, ports, reveal=False)
        env = self.env(inst, svc, ports, reveal=True)
        inst.env = stored
        uid, gid = user_ids(svc.process.security_context)
        inst.uid, inst.gid = uid, gid
        workdir = Path(svc.process.working_dir or d / "work")
        workdir.mkdir(parents=True, exist_ok=True)
        if uid is not None:
            os.chown(workdir, uid, gid if gid is not None else -1)
        inst.workdir = str(workdir)
        envresolve.write_mounts(envresolve.mount_files(self.store, self.crypto, svc, workdir), uid, gid)
        return LaunchSpec(
            instance_id=inst.id,
            namespace=inst.namespace,
            name=inst.name,
            service=svc.name,
            directory=d,
            argv=argv(svc),
            env={**inherited_env(), **env},
            cwd=str(workdir),
            image=svc.image,
            uid=uid,
            gid=gid,
            rlimit_as=quantity.memory_limit(svc.resources.memory.limit),
            ports=ports,
            log_max_bytes=self.cfg.log_max_bytes,
            log_backups=self.cfg.log_backups,
        )

    def env(self, inst: Instance, svc: service_pb2.Service, ports: dict[str, int], *, reveal: bool) -> dict[str, str]:
        """The spec's environment for ``inst``; ``reveal`` resolves secret references (never stored)."""
        return envresolve.compute_env(
            self.store, self.crypto, svc, instance_id=inst.id, instance_name=inst.name, ports=ports, reveal=reveal
        )
