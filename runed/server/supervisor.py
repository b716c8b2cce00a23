"""The runed supervisor: starts the role processes, restarts them with backoff, stops them in order."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from runed.core import filemodes
from runed.core.config import Config, unread_env
from runed.core.readiness import ready_file
from runed.server import ballast

# The roles ``runed`` runs, in start order (``runed serve --role <name>`` serves one; roles.py).
DEFAULT_ROLES: tuple[str, ...] = ("grpc", "controller", "rest")
# Exit status of a role that cannot start because of its configuration or environment
# (EX_CONFIG, for a FatalStartError): the supervisor does not restart it and exits itself.
EXIT_FATAL = 78
READY_TIMEOUT_SECONDS = 60.0
BACKOFF_MAX_SECONDS = 30.0
HEALTHY_RESET_SECONDS = 60.0
# How often the supervisor looks whether the emergency ballast can be put back (one statvfs).
BALLAST_CHECK_SECONDS = 5.0


@dataclass
class Child:
    role: str
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    next_start: float = 0.0
    address: str = ""
    ready: bool = False


@dataclass
class Supervisor:
    config: Config
    roles: tuple[str, ...]
    children: dict[str, Child] = field(default_factory=dict)
    stopping: bool = False
    _signals: int = 0
    _ballast_checked: float = 0.0

    def child_args(self, role: str) -> list[str]:
        c = self.config
        args = [sys.executable, "-m", "runed"]
        if c.source:
            args += ["--config", c.source]
        args += [
            "--data-dir",
            c.data_dir,
            "--grpc-addr",
            c.server.grpc_address,
            "--http-addr",
            c.server.http_address,
            "--log-level",
            c.log.level,
            "--log-format",
            c.log.format,
            "serve",
            "--role",
            role,
        ]
        return args

    def _spawn(self, child: Child) -> None:
        ready_file(self.config, child.role).unlink(missing_ok=True)
        # The store URL through the environment, not argv: a password in it stays out of ps.
        env = dict(os.environ, RUNED_SUPERVISOR_PID=str(os.getpid()), RUNE_STORE_URL=self.config.store.url)
        child.proc = subprocess.Popen(self.child_args(child.role), env=env)
        child.started = time.monotonic()
        child.ready = False

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals += 1
        self.stopping = True
        if self._signals > 1:
            # Second signal: no more grace.
            for ch in self.children.values():
                if ch.proc and ch.proc.poll() is None:
                    ch.proc.kill()
            os._exit(130)

    def _check_ready(self, child: Child) -> None:
        marker = ready_file(self.config, child.role)
        if child.ready or not marker.exists():
            return
        try:
            info = json.loads(marker.read_text())
        except (OSError, ValueError):
            return
        if child.proc and info.get("pid") == child.proc.pid:
            child.ready = True
            child.address = str(info.get("address", ""))

    def _keep_ballast(self) -> None:
        """Put the emergency ballast back (a start on a full disk released it) once space has returned."""
        self._ballast_checked = time.monotonic()
        if ballast.restore(self.config.data_path, self.config.controller.log_min_free_bytes):
            print(f"runed: emergency ballast in place in {self.config.data_dir}", file=sys.stderr)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self._keep_ballast()
        free = ballast.free_bytes(self.config.data_path)
        if free is not None and free < self.config.controller.log_min_free_bytes:
            print(
                f"runed: data dir {self.config.data_dir} is short of space ({free} bytes free): reads are served, "
                "instance logs are dropped and writes refused once it is full, until space is freed",
                file=sys.stderr,
            )
        for problem in unread_env():
            print(f"runed: warning: {problem}", file=sys.stderr)
        for role in self.roles:
            self.children[role] = Child(role)
            self._spawn(self.children[role])
        announced = False
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while not self.stopping:
            now = time.monotonic()
            for ch in self.children.values():
                if ch.proc is None:
                    if now >= ch.next_start:
                        self._spawn(ch)
                    continue
                code = ch.proc.poll()
                if code is None:
                    self._check_ready(ch)
                    if ch.ready and now - ch.started > HEALTHY_RESET_SECONDS:
                        ch.failures = 0
                    continue
                if code == EXIT_FATAL or not announced:
                    # The child printed why; a role that cannot start will not start on retry.
                    print(f"runed: the {ch.role} role could not start (exit status {code})", file=sys.stderr)
                    self.stop()
                    return 1
                ch.failures += 1
                delay = min(BACKOFF_MAX_SECONDS, 0.5 * 2 ** (ch.failures - 1))
                print(f"runed: {ch.role} role exited with status {code}; restarting in {delay:.1f}s", file=sys.stderr)
                ch.proc = None
                ch.next_start = now + delay
            if not announced and all(c.ready for c in self.children.values()):
                announced = True
                addrs = " ".join(f"{c.role}={c.address}" for c in self.children.values() if c.address)
                print(f"runed ready: {addrs} data_dir={self.config.data_dir}", flush=True)
            if not announced and now > deadline:
                print("runed: roles did not become ready in time", file=sys.stderr)
                self.stop()
                return 1
            if now - self._ballast_checked > BALLAST_CHECK_SECONDS:
                self._keep_ballast()
            time.sleep(0.05)
        self.stop()
        return 0

    def stop(self) -> None:
        """SIGTERM every role, wait for the grace period, then SIGKILL what is left."""
        procs = [c.proc for c in self.children.values() if c.proc and c.proc.poll() is None]
        for p in procs:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.server.shutdown_grace_seconds + 5
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def hold_data_dir(path: Path) -> tuple[int | None, str | None]:
    """Hold the data dir for this runed: ``(descriptor, None)``, kept open while it runs, or
    ``(None, why not)`` when another runed holds it.

    An exclusive ``flock`` on ``<data dir>/run/runed.lock``, which the kernel lets go of with the
    process (``kill -9`` included, so nothing stale is left to clean up); the file names the holder's
    pid for the message. Why: a second runed started on the same data dir (a second service
    manager, a forgotten terminal) removed the first one's readiness markers as it started its
    roles, so the first one's ``/readyz`` said it was down, and its controller took the lease.
    """
    run = path / "run"
    run.mkdir(parents=True, exist_ok=True)
    fd = os.open(run / "runed.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        return None, (
            f"data dir {path} is in use by another runed (pid {holder}): stop it first, "
            "or give this one a --data-dir of its own"
        )
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd, None


def check_data_dir(path: Path) -> str | None:
    """None when the data dir is usable, else one line saying why not.

    A full filesystem is usable: runed serves reads and refuses writes with RESOURCE_EXHAUSTED until
    space returns, so only a directory that cannot be written for another reason (permissions, a
    read-only mount) refuses the start. On a disk that is short of space the emergency ballast is
    released first, so that the start has room for what it must write (see ``ballast``). The data
    dir is made private first: 0700, and the umask 0o077 for what this process and its children write.
    """
    # Per-process name: the roles start together and must not unlink each other's probe.
    probe = path / f".write-test-{os.getpid()}"
    try:
        filemodes.make_private(path)
        ballast.release_if_short(path)
        probe.write_text("ok")
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return None
        return f"data dir {path} is not writable: {e.strerror}"
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return None
