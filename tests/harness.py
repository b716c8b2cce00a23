"""The one way to start a real runed for tests and benchmarks: free ports, its own data dir, always reaped.

Modelled on uvicorn's ``tests/utils.py::run_server``: :func:`run_runed` starts a real runed (the
supervisor with every role, or one role alone) with both ports on ``127.0.0.1:0`` and its data dir
where the caller says (a ``tmp_path``), waits until it says it is ready (its ``runed ready:`` line,
or the role's ``run/<role>.json`` marker naming its pid; never a fixed sleep) and, however the body
ends, stops it and reaps everything it started: its process group, the instances and shims it
recorded under its data dir, and the exec children working inside that dir.

Why here: unit, integration and e2e tests import it as ``tests.harness``, and ``bench/`` does the
same. Neither ``tests`` nor ``bench`` is installed; both are used from a checkout with the repository
root on ``sys.path`` (pytest's rootdir, ``python -m bench``), so the bench needs nothing it does not
already need. The module imports nothing from pytest, only the standard library, grpc and runed.

Orphans: every runed started here carries ``RUNED_TEST_RUN=<this process's RUN_ID>`` in its
environment, which its role processes inherit. Instances, shims and exec children get a clean
environment from runed, so they are found by what runed records under a data dir this module
started. :func:`reap_orphans` kills only those, never a process merely mentioning a temp dir.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc

RUN_ENV = "RUNED_TEST_RUN"
# One id per importing process (a pytest run, a bench run): the marker its runeds carry.
RUN_ID = uuid.uuid4().hex
# How long a runed may take to become ready: generous, as the suite runs several at once on 2 cores
# (it bounds a failure, never a passing start).
START_TIMEOUT = 60.0
# Data dirs of every runed started by this process (resolved): what the orphan check may look in.
_DATA_DIRS: set[Path] = set()


def runed_argv(*args: str) -> list[str]:
    """The command line of ``runed`` with ``args``, run by this interpreter."""
    return [sys.executable, "-m", "runed", *args]


def marked_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus ``extra`` and the run marker (for any runed this run starts)."""
    env = dict(os.environ, **(extra or {}))
    # A runed started from inside a runed role must not take this test's runed for its supervisor.
    env.pop("RUNED_SUPERVISOR_PID", None)
    env[RUN_ENV] = RUN_ID
    # Node channels on any free port: runeds of concurrent tests share the loopback addresses.
    env.setdefault("RUNE_NODE_PORT", "0")
    return env


def run_cli(args: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a ``runed`` command that ends by itself (validate, bootstrap, kek rotate, a failing start)."""
    return subprocess.run(
        runed_argv(*args),
        capture_output=True,
        text=True,
        timeout=kw.pop("timeout", 60),
        env=marked_env(kw.pop("env", None)),
        **kw,
    )


def _running(pid: int) -> bool:
    """Whether ``pid`` runs and is not a zombie (tests.support.alive, which imports this module)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1][:3]
    except OSError:
        return False
    return "Z" not in state


@dataclass
class Runed:
    """One runed process (the supervisor, or ``role`` alone) in its own process group and session."""

    data_dir: Path
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    # None: the supervisor with every role; "grpc", "rest" or "controller": `runed serve --role` alone.
    role: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    # Where this start's output begins in the (appended) log: a restart on the same data dir must
    # not be taken as ready because of the previous run's lines.
    _log_start: int = 0
    _channels: list[grpc.Channel] = field(default_factory=list)

    def command(self) -> list[str]:
        # ``args`` come after the defaults: a flag given there (``--grpc-addr``, ``--http-addr``) wins.
        base = ["--data-dir", str(self.data_dir), "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"]
        role = ["serve", "--role", self.role] if self.role else []
        return runed_argv(*base, *self.args, *role)

    def launch(self) -> Runed:
        """Start the process (output to ``log_path``) without waiting for it to be ready."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _DATA_DIRS.add(self.data_dir.resolve())
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-runed.log"
        for stale in (self.data_dir / "run").glob("*.json"):
            # A marker of a runed still running on this data dir is its own, not stale.
            with contextlib.suppress(OSError, ValueError):
                if not _running(int(json.loads(stale.read_text())["pid"])):
                    stale.unlink()
        with open(self.log_path, "ab") as log:
            self._log_start = log.tell()
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=marked_env(self.env),
                start_new_session=True,
            )
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> Runed:
        """Poll until ready; raise (with the output) if the process exits or the time runs out."""
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"runed exited with {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"runed did not become ready within {timeout}s:\n{self.output()}")
            time.sleep(0.05)
        return self

    def start(self, timeout: float = START_TIMEOUT) -> Runed:
        """Launch and wait until ready; on failure everything started is reaped before raising."""
        try:
            return self.launch().wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def ready(self) -> bool:
        if self.role is None:
            if self.log_path is None or not self.log_path.exists():
                return False
            with open(self.log_path, "rb") as f:
                f.seek(self._log_start)
                return b"runed ready:" in f.read()
        info = self._marker(self.role)
        return info is not None and self.proc is not None and info.get("pid") == self.proc.pid

    def _marker(self, role: str) -> dict[str, Any] | None:
        try:
            info: dict[str, Any] = json.loads((self.data_dir / "run" / f"{role}.json").read_text())
        except (OSError, ValueError):
            return None
        return info

    def output(self) -> str:
        """Everything the process (and earlier starts on this data dir) wrote to stdout and stderr."""
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def address(self, role: str) -> str:
        assert self.role in (None, role), f"this process serves {self.role}, not {role}"
        info = self._marker(role)
        assert info is not None, f"no {role} role is ready"
        return str(info["address"])

    def role_pid(self, role: str) -> int:
        """The pid of the process serving ``role`` (its ready marker)."""
        info = self._marker(role)
        assert info is not None, f"no {role} role is ready"
        return int(info["pid"])

    def addresses(self) -> dict[str, str]:
        """Every ready role's listen address, by role."""
        run = self.data_dir / "run"
        return {p.stem: self.address(p.stem) for p in sorted(run.glob("*.json")) if self.role in (None, p.stem)}

    @property
    def store_url(self) -> str:
        """The store this runed serves from: its ``--store-url``, else its data dir's SQLite file."""
        args = self.args
        for i, a in enumerate(args):
            if a == "--store-url" and i + 1 < len(args):
                return args[i + 1]
            if a.startswith("--store-url="):
                return a.split("=", 1)[1]
        return f"sqlite://{self.data_dir.resolve() / 'runed.db'}"

    @property
    def grpc_target(self) -> str:
        return self.address("grpc")

    @property
    def http_base(self) -> str:
        return "http://" + self.address("rest")

    def channel(self) -> grpc.Channel:
        """An insecure channel to the gRPC role, closed when this runed stops."""
        ch = grpc.insecure_channel(self.grpc_target)
        self._channels.append(ch)
        return ch

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Wait for the process to end on its own (after a signal, or a start that must fail)."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, a grace period, then SIGKILL of the group and of what the data dir records."""
        for ch in self._channels:
            ch.close()
        self._channels.clear()
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        # Whatever is left in the group (roles) goes too: no orphan survives a test.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait(5)
        reap_data_dir(self.data_dir)
        return self.proc.returncode


@contextlib.contextmanager
def run_runed(
    data_dir: Path,
    *,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    role: str | None = None,
    timeout: float = START_TIMEOUT,
    ready: bool = True,
) -> Iterator[Runed]:
    """A runed on free loopback ports with ``data_dir``; ready on entry (unless ``ready=False``), reaped on exit."""
    r = Runed(data_dir=data_dir, args=list(args), env=dict(env or {}), role=role)
    try:
        yield r.start(timeout) if ready else r.launch()
    finally:
        r.stop()


class RunedFactory(Protocol):
    """Starts a ready runed that is stopped and reaped when its owner (a fixture, a bench) ends."""

    def __call__(
        self,
        data_dir: Path,
        *,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        role: str | None = None,
        timeout: float = START_TIMEOUT,
        ready: bool = True,
    ) -> Runed: ...


class Runeds:
    """Several runeds with one owner: every one started through :meth:`start` is stopped by :meth:`close`."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()

    def start(
        self,
        data_dir: Path,
        *,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        role: str | None = None,
        timeout: float = START_TIMEOUT,
        ready: bool = True,
    ) -> Runed:
        cm = run_runed(data_dir, args=args, env=env, role=role, timeout=timeout, ready=ready)
        return self._stack.enter_context(cm)

    def close(self) -> None:
        self._stack.close()


@dataclass(frozen=True)
class _Proc:
    pid: int
    cmdline: bytes
    cwd: str


def _processes() -> list[_Proc]:
    """A snapshot of the processes visible to us (other users' cwd is unreadable: left out)."""
    procs = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            procs.append(_Proc(int(entry.name), (entry / "cmdline").read_bytes(), os.readlink(entry / "cwd")))
        except OSError:
            continue
    return procs


def _kill(pid: int, group: bool = False) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(pid, signal.SIGKILL)
        os.kill(pid, signal.SIGKILL)


def _data_dir_processes(data_dir: Path, procs: list[_Proc]) -> dict[int, str]:
    """Processes started for a data dir, whose runed may be gone: pid -> why it belongs there.

    Instances and shims run in their own sessions, on purpose outside runed's process group, and
    with a clean environment, so neither the group nor the run marker reaches them.
    """
    from runed.runner.shim import proc_start_time

    cmdlines = {p.pid: p.cmdline for p in procs}
    found: dict[int, str] = {}
    for pid_file in (data_dir / "instances").glob("*/pid.json"):
        try:
            info = json.loads(pid_file.read_text())
        except (OSError, ValueError):
            continue
        # Pids are recycled (pid_max may be 32768): only a process whose start time still matches
        # is the instance; the shim is recognised by its command line naming the instance dir.
        pid = int(info.get("pid") or 0)
        if pid > 0 and proc_start_time(pid) == info.get("pid_start"):
            found[pid] = f"instance recorded in {pid_file}"
        shim = cmdlines.get(int(info.get("shim_pid") or 0), b"")
        if b"shim" in shim and str(pid_file.parent).encode() in shim:
            found[int(info["shim_pid"])] = f"shim of {pid_file.parent}"
    # A runed stopped between starting a shim and recording its pids leaves no pid.json behind:
    # catch those by what they refer to (the shim names its instance dir; instances and exec
    # children work inside the data dir).
    root = str(data_dir.resolve())
    for p in procs:
        if f"{root}/instances/".encode() in p.cmdline or p.cwd.startswith(f"{root}/"):
            found.setdefault(p.pid, f"works in {root}")
    return found


def _protected() -> set[int]:
    """This process and its ancestors: never killed, whatever they refer to."""
    pids = {os.getpid()}
    pid = os.getpid()
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        pids.add(pid)
    return pids


def _kill_all(found: dict[int, str]) -> list[str]:
    """Kill each process (an instance with its group) and describe it."""
    own = _protected()
    report = []
    for pid, why in sorted(found.items()):
        if pid in own:
            continue
        cmd = _cmdline(pid).replace(b"\0", b" ").decode(errors="replace").strip()
        report.append(f"{pid} ({why}): {cmd[:160]}")
        _kill(pid, group=why.startswith("instance"))
    # A killed process keeps its cwd until it has finished exiting: wait, or a later check finds it again.
    deadline = time.monotonic() + 5
    pending = [pid for pid in found if pid not in own]
    while pending and time.monotonic() < deadline:
        pending = [pid for pid in pending if _exiting(pid)]
        if pending:
            time.sleep(0.02)
    return report


def _exiting(pid: int) -> bool:
    """Whether ``pid`` still exists and is not yet a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def reap_data_dir(data_dir: Path) -> list[str]:
    """Kill the instances, shims and exec children of a data dir; describe what was killed."""
    return _kill_all(_data_dir_processes(data_dir, _processes()))


def _carries_marker(pid: int) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{RUN_ENV}={RUN_ID}".encode() in environ.split(b"\0")


def reap_orphans() -> list[str]:
    """Kill what this process's runeds left alive and describe each one (empty: nothing leaked).

    Only processes this run started count: runed supervisors and roles by the run marker in their
    environment; instances, shims and exec children by the data dirs of the runeds started here.
    """
    procs = _processes()
    found = {p.pid: "carries this run's marker" for p in procs if _carries_marker(p.pid)}
    for data_dir in sorted(_DATA_DIRS):
        for pid, why in _data_dir_processes(data_dir, procs).items():
            found.setdefault(pid, why)
    return _kill_all(found)
