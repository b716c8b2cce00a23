"""The reconciler: drives instances toward the stored desired state and records what it observes."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import pwd
import shlex
import shutil
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from rune.api import common_pb2, instance_pb2, service_pb2
from runed.controller import probes, states
from runed.controller.states import ACTIVE, BACKOFF, EXITED, FATAL, RUNNING, STARTING, STOPPED, STOPPING
from runed.core import quantity
from runed.logs.events import EventWriter
from runed.model import objects
from runed.runner.base import Handle, LaunchSpec, Observation, Runner, RunnerError
from runed.runner.container import ContainerRunner
from runed.runner.process import ProcessRunner
from runed.secrets import envresolve
from runed.server.app import App
from runed.store.base import Record, iter_all

log = logging.getLogger("runed.controller")
# One line per HTTP probe is noise, not news.
logging.getLogger("httpx").setLevel(logging.WARNING)

WATCHED_KINDS = (
    objects.SERVICE,
    objects.INSTANCE_ACTION,
    objects.SCALING_OPERATION,
    objects.DELETION_OPERATION,
    objects.SECRET,
    objects.CONFIGMAP,
)
TICK_SECONDS = 0.1
FAST_TICK_SECONDS = 0.02
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


def now_iso() -> str:
    return objects.now_rfc3339()


@dataclass
class Live:
    """In-memory companions of an instance record: stop task, probe tasks, resolved env."""

    stop_task: asyncio.Task[Observation] | None = None
    # What to do once the stop finishes: "stopped" | "delete" | "restart" | "backoff".
    after_stop: str = "stopped"
    stop_reason: str = ""
    probe_tasks: list[asyncio.Task[None]] = field(default_factory=list)
    env: dict[str, str] | None = None
    liveness_failed: bool = False
    running_since: float = 0.0


class Controller:
    """One per controller role process; single event loop, the store is the only channel."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.store = app.store
        self.cfg = app.config.controller
        self.data_dir = app.config.data_path
        docker = app.config.docker
        self.runners: dict[str, Runner] = {
            "process": ProcessRunner(),
            "container": ContainerRunner(docker.socket, docker.api_version, docker.fallback_api_version),
        }
        # The controller is the only writer of instance records: this cache is authoritative.
        self.inst: dict[tuple[str, str], dict[str, Any]] = {}
        self.live: dict[tuple[str, str], Live] = {}
        # The controller is also the only writer of service status: compare here, not in the store.
        self.status_cache: dict[tuple[str, str], dict[str, Any]] = {}
        self.wake = asyncio.Event()
        # A secret or configmap changed: instances waiting on a missing reference retry at once.
        self.refs_changed = False
        self.next_due = 0.0
        self.last_full = 0.0
        # Lifecycle events for `StreamLogs(show_events)`, beside each instance's own log.
        self.events = EventWriter()

    # -- helpers --------------------------------------------------------------------------------
    @property
    def crypto(self) -> Any:
        return getattr(self.app, "crypto", None)

    def _live(self, key: tuple[str, str]) -> Live:
        return self.live.setdefault(key, Live())

    def _due(self, at: float) -> None:
        if self.next_due == 0.0 or at < self.next_due:
            self.next_due = at

    def instance_dir(self, iid: str) -> Path:
        return self.data_dir / "instances" / iid

    def event(self, key: tuple[str, str], data: dict[str, Any], text: str) -> None:
        """Record a lifecycle event of an instance (shown by ``StreamLogs`` with ``show_events``)."""
        self.events.append(Path(data.get("log_dir") or self.instance_dir(key[1])), text)

    def save(self, key: tuple[str, str], data: dict[str, Any]) -> None:
        """Write an instance record when it changed (every write wakes every watcher)."""
        if self.inst.get(key) == data:
            return
        inst = data.setdefault("instance", {})
        inst["status"] = instance_pb2.InstanceStatus.Name(
            objects.INSTANCE_STATE_TO_PB.get(data["state"], instance_pb2.INSTANCE_STATUS_UNSPECIFIED)
        )
        inst["status_message"] = data.get("reason", "")
        inst["pid"] = int(data.get("pid") or 0)
        inst["updated_at"] = now_iso()
        inst.setdefault("metadata", {})["restart_count"] = int(data.get("restart_count", 0))
        inst["metadata"]["generation"] = int(data.get("generation", 0))
        self.store.put(objects.INSTANCE, key[0], key[1], data)
        self.inst[key] = _copy(data)

    def delete_instance(self, key: tuple[str, str]) -> None:
        """Forget a stopped instance: its record, its pending action and its directory (logs, work)."""
        self._cancel_probes(key)
        d = self.instance_dir(key[1])
        self.events.forget(d)
        if d.is_dir():
            shutil.rmtree(d, ignore_errors=True)
        self.store.delete(objects.INSTANCE, key[0], key[1])
        self.store.delete(objects.INSTANCE_ACTION, key[0], key[1])
        self.inst.pop(key, None)
        self.live.pop(key, None)

    def set_state(self, key: tuple[str, str], data: dict[str, Any], to: str, reason: str) -> None:
        states.check(str(data.get("state", "")), to)
        log.debug("instance %s/%s: %s -> %s (%s)", key[0], data.get("name"), data.get("state"), to, reason)
        data["state"] = to
        data["reason"] = reason
        if to != RUNNING:
            data["ready"] = False
        self.save(key, data)

    def runner_for(self, svc: service_pb2.Service) -> Runner:
        return self.runners["container" if svc.runtime == "container" else "process"]

    # -- main loop ------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event, on_ready: Any) -> None:
        for rec in iter_all(self.store, objects.INSTANCE):
            self.inst[(rec.namespace, rec.name)] = _copy(rec.data)
        for rec in iter_all(self.store, objects.SERVICE_STATUS):
            self.status_cache[(rec.namespace, rec.name)] = rec.data
        self.adopt()
        since = self.store.current_revision()
        watcher = asyncio.create_task(self._watch(since))
        self.reconcile_all()
        on_ready("controller")
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancellation that
                    # arrives as the awaited event fires.
                    async with asyncio.timeout(self._tick_interval()):
                        await self.wake.wait()
                woke = self.wake.is_set()
                self.wake.clear()
                now = time.time()
                try:
                    changed = self.tick()
                except Exception:
                    log.exception("observing instances failed")
                    changed = True
                due = self.next_due and now >= self.next_due
                if woke or changed or due or now - self.last_full >= self.cfg.resync_seconds:
                    self.next_due = 0.0
                    try:
                        self.reconcile_all()
                    except Exception:
                        log.exception("reconcile pass failed")
                if watcher.done() and not stop.is_set():
                    exc = watcher.exception() if not watcher.cancelled() else None
                    if exc is not None:
                        log.warning("store watch ended (%s); resuming from the current revision", exc)
                    watcher = asyncio.create_task(self._watch(self.store.current_revision()))
        finally:
            watcher.cancel()
            # Bounded, so a stuck watcher can never hold up shutdown.
            await asyncio.wait({watcher}, timeout=1.0)
            for key in list(self.live):
                self._cancel_probes(key)
            # Instances are left running on purpose: a controller restart re-adopts them. Stops in
            # flight are finished so no process is left half-stopped.
            pending = [lv.stop_task for lv in self.live.values() if lv.stop_task and not lv.stop_task.done()]
            if pending:
                await asyncio.wait(pending, timeout=5)

    def _tick_interval(self) -> float:
        # Poll fast while something is starting or stopping: that is when a user is waiting.
        busy = any(d.get("state") in (STARTING, STOPPING) for d in self.inst.values())
        return FAST_TICK_SECONDS if busy else TICK_SECONDS

    async def _watch(self, since: int) -> None:
        async for change in self.store.watch(WATCHED_KINDS, since):
            if change.kind in (objects.SECRET, objects.CONFIGMAP):
                self.refs_changed = True
            self.wake.set()

    # -- adoption -------------------------------------------------------------------------------
    def adopt(self) -> None:
        """After a (re)start: re-attach to live instances, apply the restart policy to the dead."""
        for key, data in list(self.inst.items()):
            data = _copy(data)
            state = data.get("state", "")
            if state not in ACTIVE:
                continue
            runner = self.runners.get(str(data.get("runner", "process")), self.runners["process"])
            obs = runner.observe(Path(data.get("log_dir") or self.instance_dir(key[1])), _handle(data))
            if obs.state in ("running", "starting") and state != STOPPING:
                log.info("re-adopted instance %s/%s (pid %s)", key[0], data.get("name"), obs.handle.pid)
                self._apply_handle(data, obs.handle)
                if obs.state == "running" and state == STARTING:
                    self.set_state(key, data, RUNNING, "Running")
                else:
                    self.save(key, data)
                if obs.state == "running":
                    self._live(key).running_since = time.time()
                    self._start_probes(key, data)
            elif state == STOPPING:
                self._begin_stop(key, data, after=data.get("after_stop", "stopped"), reason=data.get("reason", ""))
            else:
                self._on_exit(key, data, obs)

    # -- per-tick observation -------------------------------------------------------------------
    def tick(self) -> bool:
        """Observe active instances and run due timers; True when something changed."""
        changed = False
        now = time.time()
        for r in self.runners.values():
            r.reap()
        for key, cached in list(self.inst.items()):
            state = cached.get("state")
            lv = self.live.get(key)
            if state == STOPPING:
                if lv is not None and lv.stop_task is not None and lv.stop_task.done():
                    self._finish_stop(key, _copy(cached), lv)
                    changed = True
                elif lv is None or lv.stop_task is None:
                    self._begin_stop(key, _copy(cached), after=cached.get("after_stop", "stopped"), reason="")
                continue
            if state in (STARTING, RUNNING):
                data = _copy(cached)
                if lv is not None and lv.liveness_failed:
                    lv.liveness_failed = False
                    probe = (data.get("probes") or {}).get("liveness") or {}
                    self.event(key, data, f"Liveness probe failed: {probe.get('message') or 'failing'}; killing")
                    data["restart_count"] = int(data.get("restart_count", 0))
                    self._begin_stop(key, data, after="backoff", reason="LivenessProbeFailed: restarting")
                    changed = True
                    continue
                runner = self.runners.get(str(data.get("runner", "process")), self.runners["process"])
                obs = runner.observe(Path(data["log_dir"]), _handle(data))
                if obs.state == "running" and state == STARTING:
                    self._apply_handle(data, obs.handle)
                    self.set_state(key, data, RUNNING, "Running")
                    self.event(key, data, f"Started: pid {data.get('pid') or '?'}")
                    self._live(key).running_since = now
                    self._start_probes(key, data)
                    changed = True
                elif obs.state == "exited":
                    self._apply_handle(data, obs.handle)
                    self._on_exit(key, data, obs)
                    changed = True
            elif state == BACKOFF:
                at = float(cached.get("next_restart_at") or 0)
                if at <= now:
                    changed = True  # the reconcile pass restarts it
                else:
                    self._due(at)
        return changed

    def _apply_handle(self, data: dict[str, Any], h: Handle) -> None:
        data["pid"] = h.pid
        data["pid_start"] = h.pid_start
        data["shim_pid"] = h.shim_pid
        if h.container_id:
            data["instance"]["container_id"] = h.container_id

    def _on_exit(self, key: tuple[str, str], data: dict[str, Any], obs: Observation) -> None:
        """The process is gone on its own: record how, then apply the restart policy."""
        self._cancel_probes(key)
        lv = self._live(key)
        data["last_exit_code"] = obs.code
        data["last_signal"] = obs.signal
        data["pid"] = 0
        data["ready"] = False
        data["live"] = False
        if data.get("retire"):
            self.delete_instance(key)
            return
        policy = str(data.get("restart_policy", "RESTART_POLICY_ALWAYS"))
        failed = obs.code != 0 or obs.signal is not None
        how = (
            f"killed by signal {obs.signal}"
            if obs.signal is not None
            else (f"exit code {obs.code}" if obs.code is not None else obs.error or "vanished")
        )
        if obs.error and obs.code not in (None, 0):
            how += f": {obs.error}"
        self.event(key, data, f"Exited: {how}")
        restart = policy in ("RESTART_POLICY_ALWAYS", "RESTART_POLICY_UNSPECIFIED", "") or (
            policy == "RESTART_POLICY_ON_FAILURE" and failed
        )
        if restart:
            # A run that lasted long enough proves the crash loop is over: the delay starts afresh.
            if lv.running_since and time.time() - lv.running_since >= self.cfg.restart_backoff_reset_seconds:
                data["consecutive_failures"] = 0
            n = int(data.get("consecutive_failures", 0))
            delay = min(self.cfg.restart_backoff_max_seconds, self.cfg.restart_backoff_initial_seconds * (2**n))
            data["consecutive_failures"] = n + 1
            data["next_restart_at"] = time.time() + delay
            self._due(data["next_restart_at"])
            reason = f"CrashLoopBackOff: {how}; restarting in {delay:g}s" if n >= 1 else f"Restarting: {how}"
            self.set_state(key, data, BACKOFF, reason)
            self.event(key, data, f"Back-off: restarting in {delay:g}s (restart policy {_policy_word(policy)}, {how})")
        else:
            self.event(key, data, f"Not restarted (restart policy {_policy_word(policy)})")
            data["next_restart_at"] = None
            self.set_state(key, data, EXITED, ("Completed" if not failed else "Error") + f": {how}")
        lv.running_since = 0.0

    # -- stopping -------------------------------------------------------------------------------
    def _grace(self, data: dict[str, Any], override: float | None = None) -> float:
        if override is not None:
            return max(0.0, override)
        g = data.get("grace_seconds")
        return float(g) if g else self.cfg.stop_grace_seconds

    def _begin_stop(
        self, key: tuple[str, str], data: dict[str, Any], *, after: str, reason: str, grace: float | None = None
    ) -> None:
        lv = self._live(key)
        self._cancel_probes(key)
        lv.after_stop = after
        lv.stop_reason = reason
        state = data.get("state", "")
        if state not in ACTIVE:
            # Nothing runs: finish at once.
            lv.stop_task = None
            self._finish_stop(key, data, lv, observed=False)
            return
        if lv.stop_task is not None and not lv.stop_task.done():
            return
        runner = self.runners.get(str(data.get("runner", "process")), self.runners["process"])
        lv.stop_task = asyncio.create_task(runner.stop(Path(data["log_dir"]), _handle(data), self._grace(data, grace)))
        data["after_stop"] = after
        if state != STOPPING:
            self.set_state(key, data, STOPPING, reason or "Stopping")
            self.event(key, data, f"Stopping: {reason or 'on request'}")
        else:
            self.save(key, data)

    def _finish_stop(self, key: tuple[str, str], data: dict[str, Any], lv: Live, observed: bool = True) -> None:
        obs: Observation | None = None
        if observed is True and lv.stop_task is not None:
            try:
                obs = lv.stop_task.result()
            except Exception as e:  # pragma: no cover - runner bug
                log.warning("stop of %s failed: %s", key, e)
        lv.stop_task = None
        if obs is not None:
            data["last_exit_code"] = obs.code
            data["last_signal"] = obs.signal
            how = f"signal {obs.signal}" if obs.signal is not None else f"exit code {obs.code}"
            self.event(key, data, f"Stopped: {how}")
        data["pid"] = 0
        data.pop("after_stop", None)
        after = lv.after_stop
        if after == "delete" or data.get("retire"):
            self.delete_instance(key)
            return
        if data.get("state") != STOPPED:
            self.set_state(key, data, STOPPED, lv.stop_reason or "Stopped")
        if after == "restart":
            self._start(key, data, reason="Restarted on request")
        elif after == "backoff":
            n = int(data.get("consecutive_failures", 0))
            delay = min(self.cfg.restart_backoff_max_seconds, self.cfg.restart_backoff_initial_seconds * (2**n))
            data["consecutive_failures"] = n + 1
            data["next_restart_at"] = time.time() + delay
            self._due(data["next_restart_at"])
            self.set_state(key, data, BACKOFF, f"{lv.stop_reason}; restarting in {delay:g}s")

    # -- starting -------------------------------------------------------------------------------
    def _new_instance(
        self, svc: service_pb2.Service, rec: Record, index: int
    ) -> tuple[tuple[str, str], dict[str, Any]]:
        iid = str(uuid.uuid4())
        ns = svc.namespace or rec.namespace
        name = f"{svc.name}-{index}"
        d = self.instance_dir(iid)
        ports = {(p.name or str(p.port)): free_port() for p in svc.ports}
        data: dict[str, Any] = {
            "instance": {
                "id": iid,
                "runner": "container" if svc.runtime == "container" else "process",
                "namespace": ns,
                "name": name,
                "service_id": svc.id,
                "service_name": svc.name,
                "node_id": "local",
                "ip": "127.0.0.1",
                "created_at": now_iso(),
                "resources": json_format.MessageToDict(svc.resources, preserving_proto_field_name=True),
                "metadata": {"generation": int(rec.data.get("generation", 1))},
            },
            "service": svc.name,
            "index": index,
            "name": name,
            "runner": "container" if svc.runtime == "container" else "process",
            "generation": int(rec.data.get("generation", 1)),
            "spec_hash": objects.spec_hash(svc),
            "state": "",
            "pid": 0,
            "pid_start": None,
            "shim_pid": 0,
            "log_dir": str(d),
            "workdir": svc.process.working_dir or str(d / "work"),
            "env": {},
            "user": svc.process.security_context.user,
            "uid": None,
            "gid": None,
            "ports": ports,
            "ready": False,
            "live": False,
            "restart_count": 0,
            "consecutive_failures": 0,
            "last_exit_code": None,
            "last_signal": None,
            "reason": "",
            "next_restart_at": None,
            "restart_policy": common_pb2.RestartPolicy.Name(svc.restart_policy),
            "grace_seconds": None,
            "restart_seq_seen": 0,
        }
        return (ns, iid), data

    def _start(self, key: tuple[str, str], data: dict[str, Any], *, reason: str) -> None:
        """Resolve env and mounts, spawn, and move to STARTING (or BACKOFF/FATAL with the reason)."""
        svc_rec = self.store.get(objects.SERVICE, key[0], data["service"])
        if svc_rec is None:
            self.delete_instance(key)
            return
        svc = objects.service_from_record(svc_rec)
        runner = self.runner_for(svc)
        frm = data.get("state", "")
        if frm:
            data["restart_count"] = int(data.get("restart_count", 0)) + 1
        data["restart_policy"] = common_pb2.RestartPolicy.Name(svc.restart_policy)
        unavailable = runner.unavailable_reason()
        if unavailable:
            self.set_state(key, data, FATAL, unavailable)
            return
        d = Path(data["log_dir"])
        try:
            spec = self._launch_spec(key, data, svc, d)
        except (envresolve.ResolveError, RunnerError, KeyError, OSError) as e:
            msg = getattr(e, "message", None) or str(e)
            fatal = isinstance(e, RunnerError) and e.fatal
            self._fail_start(key, data, f"CreateConfigError: {msg}", fatal=fatal)
            return
        try:
            handle = runner.start(spec)
        except RunnerError as e:
            self._fail_start(key, data, e.message, fatal=e.fatal)
            return
        self._live(key).env = spec.env
        self._apply_handle(data, handle)
        data["next_restart_at"] = None
        self.set_state(key, data, STARTING, reason)
        restarts = int(data.get("restart_count", 0))
        self.event(key, data, f"{reason} (restart {restarts})" if frm else reason)

    def _fail_start(self, key: tuple[str, str], data: dict[str, Any], msg: str, *, fatal: bool) -> None:
        self.event(key, data, f"Failed to start: {msg}")
        if fatal:
            self.set_state(key, data, FATAL, msg)
            return
        n = int(data.get("consecutive_failures", 0))
        delay = min(self.cfg.restart_backoff_max_seconds, self.cfg.restart_backoff_initial_seconds * (2**n))
        data["consecutive_failures"] = n + 1
        data["next_restart_at"] = time.time() + delay
        self._due(data["next_restart_at"])
        frm = data.get("state", "")
        if frm == "":
            # A brand-new record is recorded as attempted before it waits to retry.
            self.set_state(key, data, STARTING, msg)
        if frm == BACKOFF:
            data["reason"] = f"{msg}; retrying in {delay:g}s"
            self.save(key, data)
        else:
            self.set_state(key, data, BACKOFF, f"{msg}; retrying in {delay:g}s")

    def _launch_spec(self, key: tuple[str, str], data: dict[str, Any], svc: service_pb2.Service, d: Path) -> LaunchSpec:
        # A restart keeps its host ports (clients keep their address) unless someone else took one.
        ports = {k: v for k, v in dict(data.get("ports") or {}).items() if port_available(int(v))}
        for p in svc.ports:
            ports.setdefault(p.name or str(p.port), free_port())
        data["ports"] = ports
        name = data["instance"]["name"]
        env_stored = envresolve.compute_env(
            self.store, self.crypto, svc, instance_id=key[1], instance_name=name, ports=ports, reveal=False
        )
        env = envresolve.compute_env(
            self.store, self.crypto, svc, instance_id=key[1], instance_name=name, ports=ports, reveal=True
        )
        data["env"] = env_stored
        uid: int | None = None
        gid: int | None = None
        sc = svc.process.security_context
        if os.geteuid() == 0 and (sc.user or sc.group):
            try:
                if sc.user:
                    pw = pwd.getpwnam(sc.user) if not sc.user.isdigit() else pwd.getpwuid(int(sc.user))
                    uid, gid = pw.pw_uid, pw.pw_gid
                if sc.group:
                    gid = grp.getgrnam(sc.group).gr_gid if not sc.group.isdigit() else int(sc.group)
            except KeyError as e:
                raise RunnerError(f"security context: unknown user or group {e}", fatal=True) from None
        data["uid"], data["gid"] = uid, gid
        workdir = Path(svc.process.working_dir or d / "work")
        workdir.mkdir(parents=True, exist_ok=True)
        if uid is not None:
            os.chown(workdir, uid, gid if gid is not None else -1)
        data["workdir"] = str(workdir)
        envresolve.write_mounts(envresolve.mount_files(self.store, self.crypto, svc, workdir), uid, gid)
        if svc.process.command:
            argv = [svc.process.command, *svc.process.args]
        elif svc.command:
            argv = [*shlex.split(svc.command), *svc.args]
        else:
            argv = list(svc.args)
        base = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
        return LaunchSpec(
            instance_id=key[1],
            namespace=key[0],
            name=name,
            service=svc.name,
            directory=d,
            argv=argv,
            env={**base, **env},
            cwd=str(workdir),
            image=svc.image,
            uid=uid,
            gid=gid,
            rlimit_as=quantity.memory_limit(svc.resources.memory.limit),
            ports=ports,
            log_max_bytes=self.cfg.log_max_bytes,
            log_backups=self.cfg.log_backups,
        )

    # -- probes ---------------------------------------------------------------------------------
    def _cancel_probes(self, key: tuple[str, str]) -> None:
        lv = self.live.get(key)
        if lv is None:
            return
        for t in lv.probe_tasks:
            t.cancel()
        lv.probe_tasks.clear()

    def _start_probes(self, key: tuple[str, str], data: dict[str, Any]) -> None:
        self._cancel_probes(key)
        svc_rec = self.store.get(objects.SERVICE, key[0], data["service"])
        if svc_rec is None:
            return
        svc = objects.service_from_record(svc_rec)
        ports = dict(data.get("ports") or {})
        live_spec = probes.probe_spec(svc.health.liveness, svc, ports) if svc.HasField("health") else None
        ready_spec = probes.probe_spec(svc.health.readiness, svc, ports) if svc.HasField("health") else None
        data["live"] = True
        data["ready"] = ready_spec is None
        data["probes"] = {}
        self.save(key, data)
        lv = self._live(key)
        if live_spec is not None:
            lv.probe_tasks.append(asyncio.create_task(self._probe_loop(key, "liveness", live_spec)))
        if ready_spec is not None:
            lv.probe_tasks.append(asyncio.create_task(self._probe_loop(key, "readiness", ready_spec)))
        if ready_spec is None:
            self.wake.set()

    async def _probe_loop(self, key: tuple[str, str], which: str, spec: probes.ProbeSpec) -> None:
        st = probes.ProbeState(spec, verdict=(which == "liveness"))
        await asyncio.sleep(spec.initial_delay)
        while True:
            started = time.monotonic()
            data = self.inst.get(key)
            if data is None or data.get("state") != RUNNING:
                return
            env = self._probe_env(key, data) if spec.kind == "exec" else {}
            ok, msg = await probes.check(spec, env, data.get("workdir"))
            changed = st.record(ok, msg)
            data = self.inst.get(key)
            if data is None or data.get("state") != RUNNING:
                return
            last = data.get("probes", {}).get(which) or {}
            if not ok and last.get("last_ok") is not False:
                # The first failure of a run of failures, not every one: a failing probe repeats each period.
                self.event(key, data, f"{which.capitalize()} probe failed: {msg}")
            if which == "readiness" and changed:
                self.event(key, data, "Ready" if st.verdict else f"Not ready: {st.message}")
            # Written when the verdict or the latest result flips, not on every probe: each write
            # wakes every watcher.
            if changed or last.get("last_ok") is not ok:
                data = _copy(data)
                data.setdefault("probes", {})[which] = {
                    "ok": st.verdict,
                    "last_ok": ok,
                    "successes": st.successes,
                    "failures": st.failures,
                    "message": st.message,
                    "ts": st.checked_at,
                }
                if which == "readiness":
                    data["ready"] = st.verdict
                else:
                    data["live"] = st.verdict
                self.save(key, data)
                self.wake.set()
            if which == "liveness" and not st.verdict:
                self._live(key).liveness_failed = True
                self.wake.set()
                return
            await asyncio.sleep(max(0.0, spec.period - (time.monotonic() - started)))

    def _probe_env(self, key: tuple[str, str], data: dict[str, Any]) -> dict[str, str]:
        lv = self._live(key)
        if lv.env is None:
            svc_rec = self.store.get(objects.SERVICE, key[0], data["service"])
            if svc_rec is None:
                return {}
            svc = objects.service_from_record(svc_rec)
            try:
                env = envresolve.compute_env(
                    self.store,
                    self.crypto,
                    svc,
                    instance_id=key[1],
                    instance_name=data["instance"]["name"],
                    ports=dict(data.get("ports") or {}),
                    reveal=True,
                )
            except envresolve.ResolveError:
                env = {}
            lv.env = {**{k: os.environ[k] for k in INHERITED_ENV if k in os.environ}, **env}
        return lv.env

    # -- reconciliation -------------------------------------------------------------------------
    def reconcile_all(self) -> None:
        from runed.controller import operations

        self.last_full = time.time()
        refs_changed, self.refs_changed = self.refs_changed, False
        services = {(r.namespace, r.name): r for r in iter_all(self.store, objects.SERVICE)}
        actions = {(r.namespace, r.name): r.data for r in iter_all(self.store, objects.INSTANCE_ACTION)}
        deleting = operations.run_deletions(self, services)
        by_service: dict[tuple[str, str], list[tuple[tuple[str, str], dict[str, Any]]]] = {}
        for key, data in self.inst.items():
            by_service.setdefault((key[0], str(data.get("service", ""))), []).append((key, data))
        # Instances whose service is gone (deleted without an operation) are stopped and removed.
        for skey, items in by_service.items():
            if skey not in services and skey not in deleting:
                for key, data in items:
                    self._retire(key, _copy(data), "service deleted")
        for skey in [k for k in self.status_cache if k not in services and k not in deleting]:
            self.store.delete(objects.SERVICE_STATUS, *skey)
            del self.status_cache[skey]
        for key, act in actions.items():
            if key in self.inst:
                self._apply_action(key, act)
            elif key not in self.inst:
                self.store.delete(objects.INSTANCE_ACTION, key[0], key[1])
        for skey, rec in services.items():
            if skey in deleting or rec.data.get("deletion"):
                continue
            try:
                self.reconcile_service(rec, by_service.get(skey, []), services, refs_changed=refs_changed)
            except Exception:
                log.exception("reconcile of service %s/%s failed", *skey)
        operations.run_scaling(self, services)

    def _retire(self, key: tuple[str, str], data: dict[str, Any], reason: str, grace: float | None = None) -> None:
        """Stop for good and delete the record once stopped."""
        data = _copy(data)
        lv = self._live(key)
        if data.get("retire") and (lv.stop_task is not None or data.get("state") == STOPPING):
            return
        data["retire"] = True
        self._begin_stop(key, data, after="delete", reason=f"Terminating: {reason}", grace=grace)

    def _apply_action(self, key: tuple[str, str], act: dict[str, Any]) -> None:
        data = _copy(self.inst[key])
        if data.get("retire"):
            return
        seq = int(act.get("restart_seq", 0))
        timeout = float(act.get("timeout_seconds") or 0) or None
        state = data.get("state")
        lv = self._live(key)
        stamp = act.get("requested_at")
        if seq > int(data.get("restart_seq_seen", 0)):
            data["restart_seq_seen"] = seq
            data["action_applied_at"] = stamp
            data["consecutive_failures"] = 0
            if state in ACTIVE and state != STOPPING:
                self._begin_stop(key, data, after="restart", reason="Restarting on request", grace=timeout)
            elif state == STOPPING:
                lv.after_stop = "restart"
                self.save(key, data)
            else:
                if state == BACKOFF:
                    self.set_state(key, data, STOPPED, "Restarting on request")
                self._start(key, data, reason="Restarted on request")
            return
        # A request is carried out once: a later exit is the restart policy's business again (a
        # Never instance started by hand does not come back after it exits).
        if stamp == data.get("action_applied_at") or state == STOPPING:
            return
        data["action_applied_at"] = stamp
        desired = act.get("desired", "running")
        if desired == "stopped" and state in (STARTING, RUNNING, BACKOFF, EXITED, FATAL):
            self._begin_stop(key, data, after="stopped", reason="Stopped on request", grace=timeout)
        elif desired == "running" and state in (STOPPED, EXITED, FATAL) and lv.stop_task is None:
            data["consecutive_failures"] = 0
            self._start(key, data, reason="Started on request")
        else:
            self.save(key, data)

    def _deps_ready(self, svc: service_pb2.Service, ns: str, services: dict[tuple[str, str], Record]) -> str:
        """ "" when every dependency is there and ready, else what is awaited."""
        for dep in svc.dependencies:
            dns = dep.namespace or ns
            if dep.service:
                if (dns, dep.service) not in services:
                    return f"waiting for dependency service {dns}/{dep.service}"
                if not any(
                    d.get("service") == dep.service and k[0] == dns and d.get("state") == RUNNING and d.get("ready")
                    for k, d in self.inst.items()
                ):
                    return f"waiting for dependency service {dns}/{dep.service} to be ready"
            elif dep.secret and self.store.get(objects.SECRET, dns, dep.secret) is None:
                return f"waiting for dependency secret {dns}/{dep.secret}"
            elif dep.configmap and self.store.get(objects.CONFIGMAP, dns, dep.configmap) is None:
                return f"waiting for dependency configmap {dns}/{dep.configmap}"
        return ""

    def reconcile_service(
        self,
        rec: Record,
        items: list[tuple[tuple[str, str], dict[str, Any]]],
        services: dict[tuple[str, str], Record],
        *,
        refs_changed: bool = False,
    ) -> None:
        svc = objects.service_from_record(rec)
        ns = rec.namespace
        want_hash = objects.spec_hash(svc)
        scale = max(0, svc.scale)
        gen = int(rec.data.get("generation", 1))
        message = ""
        current = [(k, d) for k, d in items if not d.get("retire")]
        # Restart instances whose back-off elapsed.
        now = time.time()
        for key, data in current:
            waiting_on_ref = refs_changed and str(data.get("reason", "")).startswith("CreateConfigError")
            if data.get("state") == BACKOFF and (float(data.get("next_restart_at") or 0) <= now or waiting_on_ref):
                act = self.store.get(objects.INSTANCE_ACTION, key[0], key[1])
                if act is None or act.data.get("desired", "running") == "running":
                    self._start(key, _copy(self.inst[key]), reason="Restarting after back-off")
        # Scale down: the highest indexes go first.
        for key, data in current:
            if int(data.get("index", 0)) >= scale:
                self._retire(key, _copy(data), "scaled down")
        current = [(k, d) for k, d in current if int(d.get("index", 0)) < scale]
        by_index: dict[int, list[tuple[tuple[str, str], dict[str, Any]]]] = {}
        for key, data in current:
            by_index.setdefault(int(data["index"]), []).append((key, data))
        deps = self._deps_ready(svc, ns, services)
        has_readiness = svc.HasField("health") and svc.health.readiness.type != common_pb2.PROBE_TYPE_UNSPECIFIED
        if deps:
            message = deps
        else:
            for i in range(scale):
                if i not in by_index:
                    key, data = self._new_instance(svc, rec, i)
                    self._start(key, data, reason="Starting")
            # Rolling update: one index at a time; a surge instance must be ready before its old one goes.
            rolling = False
            for i in sorted(by_index):
                group = by_index[i]
                new = [(k, d) for k, d in group if d.get("spec_hash") == want_hash]
                old = [(k, d) for k, d in group if d.get("spec_hash") != want_hash]
                if not old:
                    # Duplicates at one index (left by an interrupted rollout) keep the newest.
                    for key, data in sorted(new, key=lambda kd: kd[1]["instance"].get("created_at", ""))[:-1]:
                        self._retire(key, _copy(data), "duplicate")
                    continue
                rolling = True
                if has_readiness:
                    if not new:
                        key, data = self._new_instance(svc, rec, i)
                        self._start(key, data, reason="Starting (rolling update)")
                        break
                    if any(d.get("ready") and d.get("state") == RUNNING for _, d in new):
                        for key, data in old:
                            self._retire(key, _copy(data), "replaced by rolling update")
                    break
                for key, data in old:
                    self._retire(key, _copy(data), "replaced by rolling update")
                break
            if rolling:
                message = "rolling update in progress"
        # Same-spec instances pick up generation bumps that did not change what runs (labels, scale).
        for key, data in current:
            if data.get("spec_hash") == want_hash and int(data.get("generation", 0)) != gen and not data.get("retire"):
                d2 = _copy(self.inst.get(key, data))
                d2["generation"] = gen
                self.save(key, d2)
        self._write_status(rec, svc, scale, message)

    def _write_status(self, rec: Record, svc: service_pb2.Service, scale: int, message: str) -> None:
        ns, name = rec.namespace, rec.name
        mine = [d for k, d in self.inst.items() if k[0] == ns and d.get("service") == name and not d.get("retire")]
        running = sum(1 for d in mine if d.get("state") == RUNNING)
        ready = sum(1 for d in mine if d.get("state") == RUNNING and d.get("ready"))
        failed = any(
            d.get("state") in (BACKOFF, FATAL) or (d.get("state") == EXITED and d.get("last_exit_code")) for d in mine
        )
        want_hash = objects.spec_hash(svc)
        outdated = any(d.get("spec_hash") != want_hash for d in mine)
        if failed:
            status = "Failed"
        elif outdated or (message == "rolling update in progress"):
            status = "Updating"
        elif scale == 0 or (ready >= scale and len(mine) == scale):
            status = "Running" if scale > 0 or not mine else "Updating"
        elif mine:
            status = "Updating" if int(rec.data.get("generation", 1)) > 1 else "Pending"
        else:
            status = "Pending"
        if failed and not message:
            bad = next(d for d in mine if d.get("state") in (BACKOFF, FATAL, EXITED))
            message = f"{bad['instance']['name']}: {bad.get('reason', '')}"
        data = {
            "observed_generation": int(rec.data.get("generation", 1)),
            "status": status,
            "desired": scale,
            "effective_scale": scale,
            "running": running,
            "ready": ready,
            "message": message,
        }
        if self.status_cache.get((ns, name)) != data:
            self.store.put(objects.SERVICE_STATUS, ns, name, data)
            self.status_cache[(ns, name)] = data


def _policy_word(policy: str) -> str:
    """The restart policy as cast files spell it (the unset policy is Always)."""
    return {"RESTART_POLICY_ON_FAILURE": "OnFailure", "RESTART_POLICY_NEVER": "Never"}.get(policy, "Always")


def _copy(d: dict[str, Any]) -> dict[str, Any]:
    import orjson

    out: dict[str, Any] = orjson.loads(orjson.dumps(d))
    return out


def _handle(data: dict[str, Any]) -> Handle:
    return Handle(
        pid=int(data.get("pid") or 0),
        pid_start=data.get("pid_start"),
        shim_pid=int(data.get("shim_pid") or 0),
        container_id=str(data.get("instance", {}).get("container_id", "")),
    )
