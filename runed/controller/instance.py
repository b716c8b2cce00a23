"""The controller's instance: a typed object with its state, converted to and from the stored record."""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeAlias, cast

from google.protobuf import json_format

from rune.api import common_pb2, instance_pb2, service_pb2
from runed.controller import states
from runed.controller.states import State
from runed.model import objects
from runed.runner.base import Handle
from runed.store.base import Record

log = logging.getLogger("runed.controller")

# (namespace, instance id): how the controller, the store and the API name one instance.
Key = tuple[str, str]

RestartPolicy: TypeAlias = common_pb2.RestartPolicy


class AfterStop(StrEnum):
    """What happens once a stop we started has finished (stored while STOPPING, so a restart resumes it)."""

    STOPPED = "stopped"
    DELETE = "delete"
    RESTART = "restart"
    BACKOFF = "backoff"


@dataclass(frozen=True)
class ProbeResult:
    """The latest verdict of one probe as the record shows it (read by the health API)."""

    ok: bool
    last_ok: bool
    successes: int
    failures: int
    message: str
    ts: float

    def to_record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> ProbeResult:
        return cls(
            ok=bool(d.get("ok")),
            last_ok=bool(d.get("last_ok")),
            successes=int(d.get("successes", 0)),
            failures=int(d.get("failures", 0)),
            message=str(d.get("message", "")),
            ts=float(d.get("ts") or 0),
        )


@dataclass
class Instance:
    """One instance as the controller sees it; only the controller writes instance records.

    The record keeps the runner's fields at the top and the API's ``Instance`` message (in its JSON
    form) under ``"instance"``; :meth:`to_record` writes both from these fields.
    """

    namespace: str
    id: str
    service: str
    index: int
    name: str
    runner: str
    generation: int
    spec_hash: str
    log_dir: str
    workdir: str
    service_id: str = ""
    created_at: str = ""
    updated_at: str = ""
    # The service's resources when the instance was made, as the API shows them (proto JSON form).
    resources: dict[str, Any] = field(default_factory=dict)
    container_id: str = ""
    state: State = State.NEW
    reason: str = ""
    # The last start failed on its configuration (a missing secret or configmap): a change to
    # secrets or configmaps retries it at once instead of after the back-off.
    config_error: bool = False
    pid: int = 0
    pid_start: int | None = None
    shim_pid: int = 0
    shim_start: int | None = None
    # The runner's id of the current start (see :attr:`Handle.attempt`).
    attempt: str = ""
    # When the current run began (wall clock), kept while RUNNING: a run that lasted long enough
    # resets the back-off, also when it ended while no controller was watching.
    running_since: float | None = None
    # Environment with secret references unresolved (what the API may show).
    env: dict[str, str] = field(default_factory=dict)
    user: str = ""
    uid: int | None = None
    gid: int | None = None
    ports: dict[str, int] = field(default_factory=dict)
    ready: bool = False
    live: bool = False
    restart_count: int = 0
    consecutive_failures: int = 0
    last_exit_code: int | None = None
    last_signal: int | None = None
    next_restart_at: float | None = None
    restart_policy: RestartPolicy = common_pb2.RESTART_POLICY_ALWAYS
    grace_seconds: float | None = None
    restart_seq_seen: int = 0
    action_applied_at: float | None = None
    after_stop: AfterStop | None = None
    retire: bool = False
    probes: dict[str, ProbeResult] | None = None
    # The node that runs it and that node's address ("local" in records from before nodes: this host).
    node_id: str = "local"
    ip: str = "127.0.0.1"

    @functools.cached_property
    def key(self) -> Key:
        """(namespace, id), which never change: made once (a deletion of a thousand asked nine times
        each), and taken over by :meth:`copy` with the other attributes."""
        return (self.namespace, self.id)

    @property
    def handle(self) -> Handle:
        """How the runner finds the process again."""
        return Handle(
            pid=self.pid,
            pid_start=self.pid_start,
            shim_pid=self.shim_pid,
            shim_start=self.shim_start,
            container_id=self.container_id,
            attempt=self.attempt,
        )

    def apply_handle(self, h: Handle) -> None:
        self.pid = h.pid
        self.pid_start = h.pid_start
        self.shim_pid = h.shim_pid
        self.shim_start = h.shim_start
        if h.container_id:
            self.container_id = h.container_id
        if h.attempt:
            self.attempt = h.attempt

    def transition(self, to: State, reason: str, *, config_error: bool = False) -> str:
        """The one place an instance changes state: checked against the table, returns the edge's why."""
        frm = self.state
        why = states.check(frm, to)
        # The states as they are (a StrEnum prints its value): no attribute looked up for a message
        # that is not logged (a deletion of a thousand makes a thousand transitions in one pass).
        log.debug("instance %s/%s: %s -> %s (%s)", self.namespace, self.name, frm, to, reason)
        self.state = to
        self.reason = reason
        self.config_error = config_error
        if to is not State.RUNNING:
            self.ready = False
            self.running_since = None
        elif frm is not State.RUNNING or self.running_since is None:
            self.running_since = time.time()
        return why

    def copy(self) -> Instance:
        """A working copy: changes reach the record only through a save."""
        # The fields taken over as they are, not through copy.copy (its reduce protocol: 3.1 µs
        # against 0.5) or dataclasses.replace (__init__ through every field: 8 µs), several times
        # per instance and pass.
        dup = object.__new__(Instance)
        dup.__dict__.update(self.__dict__)
        dup.env, dup.ports = dict(self.env), dict(self.ports)
        dup.probes = None if self.probes is None else dict(self.probes)
        return dup

    @classmethod
    def new(
        cls,
        svc: service_pb2.Service,
        namespace: str,
        generation: int,
        index: int,
        iid: str,
        d: Path,
        spec_hash: str | None = None,
    ) -> Instance:
        """A fresh instance of ``svc`` at ``index`` (state NEW, not yet saved); ``spec_hash``: the
        spec's :func:`objects.spec_hash` when already known (a pass knows it once per service)."""
        runner = "container" if svc.runtime == "container" else "process"
        return cls(
            namespace=namespace,
            id=iid,
            service=svc.name,
            index=index,
            name=f"{svc.name}-{index}",
            runner=runner,
            generation=generation,
            spec_hash=objects.spec_hash(svc) if spec_hash is None else spec_hash,
            log_dir=str(d),
            workdir=svc.process.working_dir or str(d / "work"),
            service_id=svc.id,
            created_at=objects.now_rfc3339(),
            resources=json_format.MessageToDict(svc.resources, preserving_proto_field_name=True),
            user=svc.process.security_context.user,
            restart_policy=svc.restart_policy,
        )

    def to_record(self) -> dict[str, Any]:
        """The stored form (keys and strings as the API, the tests and older controllers know them)."""
        info: dict[str, Any] = {
            "id": self.id,
            "runner": self.runner,
            "namespace": self.namespace,
            "name": self.name,
            "service_id": self.service_id,
            "service_name": self.service,
            "node_id": self.node_id,
            "ip": self.ip,
            "created_at": self.created_at,
            "resources": self.resources,
            "metadata": {"generation": self.generation, "restart_count": self.restart_count},
            "status": instance_pb2.InstanceStatus.Name(
                objects.INSTANCE_STATE_TO_PB.get(self.state.value, instance_pb2.INSTANCE_STATUS_UNSPECIFIED)
            ),
            "status_message": self.reason,
            "pid": self.pid,
            "updated_at": self.updated_at,
        }
        if self.container_id:
            info["container_id"] = self.container_id
        data: dict[str, Any] = {
            "instance": info,
            "service": self.service,
            "index": self.index,
            "name": self.name,
            "runner": self.runner,
            "generation": self.generation,
            "spec_hash": self.spec_hash,
            "state": self.state.value,
            "pid": self.pid,
            "pid_start": self.pid_start,
            "shim_pid": self.shim_pid,
            "log_dir": self.log_dir,
            "workdir": self.workdir,
            "env": dict(self.env),
            "user": self.user,
            "uid": self.uid,
            "gid": self.gid,
            "ports": dict(self.ports),
            "ready": self.ready,
            "live": self.live,
            "restart_count": self.restart_count,
            "consecutive_failures": self.consecutive_failures,
            "last_exit_code": self.last_exit_code,
            "last_signal": self.last_signal,
            "reason": self.reason,
            "next_restart_at": self.next_restart_at,
            "restart_policy": common_pb2.RestartPolicy.Name(self.restart_policy),
            "grace_seconds": self.grace_seconds,
            "restart_seq_seen": self.restart_seq_seen,
        }
        # Keys that only exist once something set them.
        if self.config_error:
            data["config_error"] = True
        if self.action_applied_at is not None:
            data["action_applied_at"] = self.action_applied_at
        if self.shim_start is not None:
            data["shim_start"] = self.shim_start
        if self.attempt:
            data["attempt"] = self.attempt
        if self.running_since is not None:
            data["running_since"] = self.running_since
        if self.after_stop is not None:
            data["after_stop"] = self.after_stop.value
        if self.retire:
            data["retire"] = True
        if self.probes is not None:
            data["probes"] = {which: p.to_record() for which, p in self.probes.items()}
        return data

    @classmethod
    def from_record(cls, rec: Record) -> Instance:
        """Read a stored instance; raises ValueError for a state or policy this controller does not know."""
        data = rec.data
        info: dict[str, Any] = data.get("instance") or {}
        meta: dict[str, Any] = info.get("metadata") or {}
        after = data.get("after_stop")
        probes = data.get("probes")
        service = str(data.get("service") or info.get("service_name") or "")
        index = int(data.get("index", 0))
        return cls(
            namespace=rec.namespace,
            id=rec.name,
            service=service,
            index=index,
            name=str(data.get("name") or info.get("name") or f"{service}-{index}"),
            runner=str(data.get("runner") or info.get("runner") or "process"),
            generation=int(data.get("generation", meta.get("generation", 0))),
            spec_hash=str(data.get("spec_hash", "")),
            log_dir=str(data.get("log_dir") or ""),
            workdir=str(data.get("workdir") or ""),
            service_id=str(info.get("service_id", "")),
            created_at=str(info.get("created_at", "")),
            updated_at=str(info.get("updated_at", "")),
            resources=dict(info.get("resources") or {}),
            container_id=str(info.get("container_id", "")),
            state=State(str(data.get("state", ""))),
            reason=str(data.get("reason", "")),
            config_error=bool(data.get("config_error")),
            pid=int(data.get("pid") or 0),
            pid_start=_opt_int(data.get("pid_start")),
            shim_pid=int(data.get("shim_pid") or 0),
            shim_start=_opt_int(data.get("shim_start")),
            attempt=str(data.get("attempt") or ""),
            running_since=_opt_float(data.get("running_since")),
            env={str(k): str(v) for k, v in (data.get("env") or {}).items()},
            user=str(data.get("user") or ""),
            uid=_opt_int(data.get("uid")),
            gid=_opt_int(data.get("gid")),
            ports={str(k): int(v) for k, v in (data.get("ports") or {}).items()},
            ready=bool(data.get("ready")),
            live=bool(data.get("live")),
            restart_count=int(data.get("restart_count", 0)),
            consecutive_failures=int(data.get("consecutive_failures", 0)),
            last_exit_code=_opt_int(data.get("last_exit_code")),
            last_signal=_opt_int(data.get("last_signal")),
            next_restart_at=_opt_float(data.get("next_restart_at")),
            restart_policy=_policy(data.get("restart_policy")),
            grace_seconds=_opt_float(data.get("grace_seconds")),
            restart_seq_seen=int(data.get("restart_seq_seen", 0)),
            action_applied_at=_opt_float(data.get("action_applied_at")),
            after_stop=AfterStop(after) if after else None,
            retire=bool(data.get("retire")),
            probes=None if probes is None else {str(k): ProbeResult.from_record(v) for k, v in probes.items()},
            node_id=str(info.get("node_id") or "local"),
            ip=str(info.get("ip") or "127.0.0.1"),
        )


def _policy(name: Any) -> RestartPolicy:
    """A stored policy name; records without one are Always (as new instances of an unset policy)."""
    return cast(RestartPolicy, common_pb2.RestartPolicy.Value(str(name or "RESTART_POLICY_ALWAYS")))


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)
