"""Liveness and readiness probes (HTTP, TCP, exec) with initial delay, period, timeout and thresholds."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass

import httpx

from rune.api import common_pb2, service_pb2
from runed.exec import become
from runed.secrets.envresolve import port_env

DEFAULT_PERIOD = 10
DEFAULT_TIMEOUT = 1
DEFAULT_SUCCESS = 1
DEFAULT_FAILURE = 3


@dataclass(frozen=True)
class ProbeSpec:
    """One probe with defaults applied and its port already mapped to the instance's host port."""

    kind: str  # "http" | "tcp" | "exec"
    path: str
    port: int
    command: tuple[str, ...]
    initial_delay: float
    period: float
    timeout: float
    success_threshold: int
    failure_threshold: int
    # Said beside a refused connection: where the instance should listen (see :func:`listen_hint`).
    hint: str = ""


def _named(port: int, svc: service_pb2.Service) -> common_pb2.ServicePort | None:
    """The declared port a probe's ``port`` names (its port or target_port; 0: the first), or None."""
    for p in svc.ports:
        if port in (p.port, p.target_port) or (port == 0 and p == svc.ports[0]):
            return p
    return None


def host_port(port: int, svc: service_pb2.Service, ports: dict[str, int]) -> int:
    """A probe names the declared port (port or target_port); the instance listens on its host port."""
    p = _named(port, svc)
    mapped = ports.get(p.name or str(p.port)) if p is not None else None
    return mapped or port


def listen_hint(port: int, svc: service_pb2.Service, ports: dict[str, int]) -> str:
    """Where a process instance listens for the declared port a probe names, when that is not the
    port declared: it shares the host's network, so each instance gets a host port of its own and
    is told it in ``$PORT`` (the first port) and ``$RUNE_PORT_<NAME>``. A program that listens on
    the declared number (``http.server 8080``) refuses every probe, and this says why."""
    p = _named(port, svc)
    if svc.runtime != "process" or p is None:
        return ""
    key = p.name or str(p.port)
    mapped = ports.get(key)
    if not mapped or mapped == p.port:
        return ""
    first = p == svc.ports[0]
    told = ("$PORT and " if first else "") + "$" + port_env(key)
    arg = "$(PORT)" if first else f"$({port_env(key)})"
    return (
        f"a process instance listens for port {key} on its host port {mapped}, given in {told} "
        f"(args may say {arg}), not on {p.port}"
    )


def probe_spec(p: common_pb2.Probe, svc: service_pb2.Service, ports: dict[str, int]) -> ProbeSpec | None:
    """None when the probe is unset (no type)."""
    kinds = {
        common_pb2.PROBE_TYPE_HTTP: "http",
        common_pb2.PROBE_TYPE_TCP: "tcp",
        common_pb2.PROBE_TYPE_COMMAND: "exec",
    }
    kind = kinds.get(p.type)
    if kind is None:
        return None
    return ProbeSpec(
        kind=kind,
        path=p.path or "/",
        port=host_port(p.port, svc, ports),
        command=tuple(p.command),
        initial_delay=max(0, p.initial_delay_seconds),
        period=p.period_seconds if p.period_seconds > 0 else DEFAULT_PERIOD,
        timeout=p.timeout_seconds if p.timeout_seconds > 0 else DEFAULT_TIMEOUT,
        success_threshold=p.success_threshold if p.success_threshold > 0 else DEFAULT_SUCCESS,
        failure_threshold=p.failure_threshold if p.failure_threshold > 0 else DEFAULT_FAILURE,
        hint=listen_hint(p.port, svc, ports),
    )


def _refused(spec: ProbeSpec, e: BaseException) -> str:
    """Why a connection failed, in words (httpx's errors print as nothing), with the spec's hint when refused."""
    refused = False
    cur: BaseException | None = e
    while cur is not None:
        if isinstance(cur, ConnectionRefusedError):
            refused = True
            break
        cur = cur.__cause__ or cur.__context__
    if refused:
        return "connection refused" + (f" ({spec.hint})" if spec.hint else "")
    if isinstance(e, TimeoutError | httpx.TimeoutException):
        return f"timed out after {spec.timeout:g}s"
    return str(e) or type(e).__name__


async def _http(spec: ProbeSpec) -> tuple[bool, str]:
    url = f"http://127.0.0.1:{spec.port}{spec.path if spec.path.startswith('/') else '/' + spec.path}"
    try:
        async with httpx.AsyncClient(timeout=spec.timeout) as c:
            r = await c.get(url)
    except httpx.HTTPError as e:
        return False, f"GET {url}: {_refused(spec, e)}"
    ok = 200 <= r.status_code < 400
    return ok, f"GET {url}: HTTP {r.status_code}"


async def _tcp(spec: ProbeSpec) -> tuple[bool, str]:
    try:
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancellation of a probe
        # task that is being stopped, leaving a stray probe loop behind.
        async with asyncio.timeout(spec.timeout):
            _, w = await asyncio.open_connection("127.0.0.1", spec.port)
    except (OSError, TimeoutError) as e:
        return False, f"tcp 127.0.0.1:{spec.port}: {_refused(spec, e)}"
    w.close()
    with contextlib.suppress(OSError):
        await w.wait_closed()
    return True, f"tcp 127.0.0.1:{spec.port}: connected"


async def _exec(
    spec: ProbeSpec, env: dict[str, str], cwd: str | None, uid: int | None, gid: int | None
) -> tuple[bool, str]:
    if not spec.command:
        return False, "exec probe has no command"
    # As the instance runs: under another user through the shim that switches to it (9 ms more),
    # else started directly (a probe of each of a thousand instances runs every period).
    command = list(spec.command)
    if uid is not None or gid is not None:
        command = become.argv(command, uid, gid)
    try:
        proc = await asyncio.create_subprocess_exec(
            *command,
            env=env,
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as e:
        return False, f"exec {spec.command[0]}: {e.strerror}"
    try:
        async with asyncio.timeout(spec.timeout):
            rc = await proc.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return False, f"exec {spec.command[0]}: timed out after {spec.timeout:g}s"
    return rc == 0, f"exec {spec.command[0]}: exit {rc}"


async def check(
    spec: ProbeSpec, env: dict[str, str], cwd: str | None, uid: int | None = None, gid: int | None = None
) -> tuple[bool, str]:
    """Run one probe attempt (an exec probe's command as ``uid``/``gid``: None, runed's); never raises."""
    if spec.kind == "http":
        return await _http(spec)
    if spec.kind == "tcp":
        return await _tcp(spec)
    return await _exec(spec, env, cwd, uid, gid)


@dataclass
class ProbeState:
    """Threshold bookkeeping: the verdict flips only after enough consecutive results."""

    spec: ProbeSpec
    verdict: bool
    successes: int = 0
    failures: int = 0
    message: str = ""
    checked_at: float = 0.0

    def record(self, ok: bool, message: str) -> bool:
        """Count one result; True when the verdict changed."""
        self.message = message
        self.checked_at = time.time()
        if ok:
            self.successes += 1
            self.failures = 0
            if not self.verdict and self.successes >= self.spec.success_threshold:
                self.verdict = True
                return True
        else:
            self.failures += 1
            self.successes = 0
            if self.verdict and self.failures >= self.spec.failure_threshold:
                self.verdict = False
                return True
        return False
