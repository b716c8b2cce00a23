"""Test support: run a real runed on free ports with its own data dir, and wait for conditions."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

T = TypeVar("T")


def eventually(check: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = "") -> T:
    """Poll ``check`` until it returns a truthy value (or stops raising AssertionError)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except AssertionError as e:
            last = e
        if time.monotonic() > deadline:
            msg = f"condition not met within {timeout}s" + (f": {what}" if what else "")
            raise AssertionError(msg) from last
        time.sleep(interval)


@dataclass
class Runed:
    """A runed supervisor process (or one role) started for a test, in its own process group."""

    data_dir: Path
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    roles: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    # Where this start's output begins in the (appended) log: a restart on the same data dir must
    # not be taken as ready because of the previous run's lines.
    _log_start: int = 0
    _channels: list[grpc.Channel] = field(default_factory=list)

    def command(self) -> list[str]:
        base = [sys.executable, "-m", "runed", "--data-dir", str(self.data_dir)]
        base += ["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", *self.args]
        return base

    def start(self, timeout: float = 30.0) -> Runed:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-runed.server.logging"
        run_dir = self.data_dir / "run"
        for f in run_dir.glob("*.json") if run_dir.exists() else []:
            f.unlink()
        env = dict(os.environ, **self.env)
        env.pop("RUNED_SUPERVISOR_PID", None)
        log = open(self.log_path, "ab")
        self._log_start = log.tell()
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"runed exited with {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"runed did not become ready:\n{self.output()}")
            time.sleep(0.05)
        return self

    def ready(self) -> bool:
        if self.log_path is None or not self.log_path.exists():
            return False
        return b"runed ready:" in self.log_path.read_bytes()[self._log_start :]

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def address(self, role: str) -> str:
        return str(json.loads((self.data_dir / "run" / f"{role}.json").read_text())["address"])

    @property
    def grpc_target(self) -> str:
        return self.address("grpc")

    @property
    def http_base(self) -> str:
        return "http://" + self.address("rest")

    def channel(self) -> grpc.Channel:
        ch = grpc.insecure_channel(self.grpc_target)
        self._channels.append(ch)
        return ch

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int | None:
        for ch in self._channels:
            ch.close()
        self._channels.clear()
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left in the group (roles, instances) goes too: no orphans survive a test.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(5)
        kill_instances(self.data_dir)
        return self.proc.returncode


def kill_instances(data_dir: Path) -> None:
    """Kill the instances (and their shims) of a data dir: they run in their own sessions, on purpose
    outside runed's process group, so killing the group does not reach them."""
    for pid_file in (data_dir / "instances").glob("*/pid.json"):
        try:
            info = json.loads(pid_file.read_text())
        except (OSError, ValueError):
            continue
        from runed.runner.shim import proc_start_time

        # Pids are recycled (pid_max may be 32768): only a process whose start time still matches
        # is the instance; the shim is recognised by its command line.
        pid = int(info.get("pid") or 0)
        if pid > 0 and proc_start_time(pid) == info.get("pid_start"):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        shim = int(info.get("shim_pid") or 0)
        try:
            cmdline = Path(f"/proc/{shim}/cmdline").read_bytes() if shim > 0 else b""
        except OSError:
            cmdline = b""
        if b"shim" in cmdline and str(pid_file.parent).encode() in cmdline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(shim, signal.SIGKILL)
    # A runed stopped between starting a shim and recording its pids leaves no pid.json behind:
    # catch those by what they refer to (the shim names its instance dir; instances and exec
    # children work inside the data dir).
    root = str(data_dir.resolve())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if f"{root}/instances/" in cmd or cwd.startswith(f"{root}/"):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)


def run_cli(args: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run the runed CLI to completion (for start-up error tests)."""
    return subprocess.run(
        [sys.executable, "-m", "runed", *args], capture_output=True, text=True, timeout=kw.pop("timeout", 60), **kw
    )


def bootstrap_metadata(channel: grpc.Channel) -> list[tuple[str, str]]:
    """AdminBootstrap over ``channel`` (loopback) and the root token as gRPC call metadata."""
    from rune.api import admin_pb2, admin_pb2_grpc

    token = admin_pb2_grpc.AdminServiceStub(channel).AdminBootstrap(admin_pb2.AdminBootstrapRequest()).token_secret
    return [("authorization", f"Bearer {token}")]


@contextlib.contextmanager
def rest_bootstrapped_runed(tmp: Path, runefile: str) -> Iterator[tuple[Runed, str]]:
    """A runed configured by ``runefile``, bootstrapped over REST from loopback: (runed, root token)."""
    import httpx

    cfg = tmp / "runefile.yaml"
    cfg.write_text(runefile)
    r = Runed(data_dir=tmp / "data", args=["--config", str(cfg)])
    try:
        r.start()
        resp = httpx.post(r.http_base + "/v1/admin:bootstrap", json={}, timeout=10)
        assert resp.status_code == 200, resp.text
        yield r, resp.json()["tokenSecret"]
    finally:
        r.stop()
