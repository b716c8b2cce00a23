"""One exec session: a command run in an instance's context, on pipes or on a pseudo-terminal.

The command runs in its own session and process group so that a signal, a timeout or a client
that goes away reaches everything it started. Events come out of :meth:`ExecProcess.events` in
order and always end with exactly one :class:`Exit`, also when the command could not be started
(127: not found, 126: found but not executable).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import pty
import signal
import struct
import subprocess
import termios
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from runed.core import filemodes
from runed.exec import become

CHUNK = 32 * 1024
# After the command exits, output still in flight (or held by a background child) gets this long.
DRAIN_SECONDS = 0.5
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# End of input on a terminal is the VEOF character, not closing the descriptor.
VEOF = b"\x04"


@dataclass(frozen=True)
class ExecSpec:
    """What to run and how: argv, full environment, working directory, terminal, credentials."""

    command: list[str]
    env: dict[str, str]
    cwd: str
    tty: bool = False
    rows: int = 24
    cols: int = 80
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True)
class Output:
    """A chunk of the command's output."""

    stream: str  # "stdout" | "stderr" (everything is "stdout" under a TTY)
    data: bytes


@dataclass(frozen=True)
class Exit:
    """How the command ended: ``code`` (128+n when killed by signal n) and the signal, if any."""

    code: int
    signal: int | None = None

    @property
    def signal_name(self) -> str:
        if self.signal is None:
            return ""
        try:
            return signal.Signals(self.signal).name
        except ValueError:
            return str(self.signal)


Event = Output | Exit


def parse_signal(name: str) -> int:
    """``TERM``, ``SIGTERM``, ``sigterm`` or ``15`` -> 15; ValueError otherwise."""
    text = name.strip().upper()
    if text.isdigit():
        return signal.Signals(int(text)).value
    if not text.startswith("SIG"):
        text = "SIG" + text
    try:
        return signal.Signals[text].value
    except KeyError:
        raise ValueError(f"unknown signal {name!r}") from None


def _winsize(rows: int, cols: int) -> bytes:
    return struct.pack("HHHH", max(rows, 1), max(cols, 1), 0, 0)


async def until_exit(queue: asyncio.Queue[Event]) -> AsyncIterator[Event]:
    """A session's events as they are queued, ending with (and including) its Exit."""
    while True:
        ev = await queue.get()
        yield ev
        if isinstance(ev, Exit):
            return


@dataclass
class ExecProcess:
    """A started (or failed-to-start) command; feed it input, read its events, kill it."""

    spec: ExecSpec
    pid: int = 0
    exit: Exit | None = None
    _queue: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    _popen: subprocess.Popen[bytes] | None = None
    _in_fd: int = -1
    _out: list[tuple[int, str]] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _reaper: asyncio.Task[None] | None = None
    _stdin_closed: bool = False

    async def start(self) -> None:
        """Spawn the command; failures to start become an error message and an Exit event."""
        spec = self.spec
        env = dict(spec.env)
        env.setdefault("PATH", DEFAULT_PATH)
        if spec.tty:
            env.setdefault("TERM", "xterm")
        if not Path(spec.cwd).is_dir():
            self._fail(126, f"exec: working directory {spec.cwd}: no such directory\n")
            return
        user = spec.uid if spec.uid is not None and spec.uid != os.geteuid() else None
        group = spec.gid if spec.gid is not None and spec.gid != os.getegid() else None
        # Commands run as the instance would, with the umask runed inherited (not runed's private one).
        umask = filemodes.inherited_umask()
        master = slave = -1
        try:
            if spec.tty:
                master, slave = pty.openpty()
                fcntl.ioctl(slave, termios.TIOCSWINSZ, _winsize(spec.rows, spec.cols))
                self._popen = subprocess.Popen(
                    become.argv(spec.command, user, group, tty=True),
                    stdin=slave,
                    stdout=slave,
                    stderr=slave,
                    cwd=spec.cwd,
                    env=env,
                    start_new_session=True,
                    umask=umask,
                )
                self._in_fd = master
                self._out = [(master, "stdout")]
            else:
                self._popen = subprocess.Popen(
                    become.argv(spec.command, user, group),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    cwd=spec.cwd,
                    env=env,
                    start_new_session=True,
                    umask=umask,
                )
                p = self._popen
                assert p.stdin is not None and p.stdout is not None and p.stderr is not None
                # Raw descriptors, driven by the event loop; the file objects must not close them.
                self._in_fd = os.dup(p.stdin.fileno())
                self._out = [(os.dup(p.stdout.fileno()), "stdout"), (os.dup(p.stderr.fileno()), "stderr")]
                for f in (p.stdin, p.stdout, p.stderr):
                    f.close()
        except FileNotFoundError:
            if master >= 0:
                os.close(master)
            self._fail(127, f"exec: {spec.command[0]}: command not found\n")
            return
        except OSError as e:
            if master >= 0:
                os.close(master)
            code = 127 if e.errno == errno.ENOENT else 126
            self._fail(code, f"exec: {spec.command[0]}: {e.strerror or e}\n")
            return
        finally:
            if slave >= 0:
                os.close(slave)
        self.pid = self._popen.pid
        for fd, _ in self._out:
            os.set_blocking(fd, False)
        if self._in_fd >= 0:
            os.set_blocking(self._in_fd, False)
        self._tasks = [asyncio.create_task(self._pump(fd, stream)) for fd, stream in self._out]
        self._reaper = asyncio.create_task(self._reap())

    def _fail(self, code: int, message: str) -> None:
        self._queue.put_nowait(Output("stderr" if not self.spec.tty else "stdout", message.encode()))
        self.exit = Exit(code)
        self._queue.put_nowait(self.exit)

    async def _pump(self, fd: int, stream: str) -> None:
        loop = asyncio.get_running_loop()
        readable = asyncio.Event()
        loop.add_reader(fd, readable.set)
        try:
            while True:
                await readable.wait()
                readable.clear()
                try:
                    chunk = os.read(fd, CHUNK)
                except BlockingIOError:
                    continue
                except OSError:
                    return  # EIO on a PTY: every holder of the terminal's other side is gone
                if not chunk:
                    return
                await self._queue.put(Output(stream, chunk))
        finally:
            loop.remove_reader(fd)

    async def _wait_exit(self) -> int:
        p = self._popen
        assert p is not None
        loop = asyncio.get_running_loop()
        try:
            pidfd = os.pidfd_open(p.pid)
        except (AttributeError, OSError):
            pidfd = -1
        if pidfd < 0:
            while (rc := p.poll()) is None:
                await asyncio.sleep(0.02)
            return rc
        exited = asyncio.Event()
        loop.add_reader(pidfd, exited.set)
        try:
            while (rc := p.poll()) is None:
                await exited.wait()
                exited.clear()
            return rc
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)

    async def _reap(self) -> None:
        rc = await self._wait_exit()
        # Output written just before exit is still in the pipes; a background child holding them
        # open must not keep the session alive, so drain briefly and then end the group.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), DRAIN_SECONDS)
        self._kill_group()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._close_fds()
        self.exit = Exit(128 - rc, -rc) if rc < 0 else Exit(rc)
        await self._queue.put(self.exit)

    def _close_fds(self) -> None:
        fds = {fd for fd, _ in self._out} | {self._in_fd}
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._out = []
        self._in_fd = -1

    def events(self) -> AsyncIterator[Event]:
        """Output chunks in order, then the Exit."""
        return until_exit(self._queue)

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view and self._in_fd >= 0 and not self._stdin_closed:
            try:
                n = os.write(self._in_fd, view)
                view = view[n:]
            except BlockingIOError:
                await asyncio.sleep(0.005)
            except OSError:
                return  # the command closed its input or exited

    async def close_stdin(self) -> None:
        """End of input: closes the pipe, or sends VEOF on a terminal."""
        if self._in_fd < 0 or self._stdin_closed:
            return
        if self.spec.tty:
            await self.write(VEOF)
            return
        self._stdin_closed = True
        with contextlib.suppress(OSError):
            os.close(self._in_fd)
        self._in_fd = -1

    def resize(self, rows: int, cols: int) -> None:
        """TIOCSWINSZ on the terminal; the kernel sends SIGWINCH to its foreground group."""
        if self.spec.tty and self._in_fd >= 0:
            with contextlib.suppress(OSError):
                fcntl.ioctl(self._in_fd, termios.TIOCSWINSZ, _winsize(rows, cols))

    def send_signal(self, sig: int) -> None:
        if self.pid and self.exit is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)

    def _kill_group(self) -> None:
        if self.pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    async def kill(self) -> None:
        """SIGKILL the whole process group and wait until the command is reaped."""
        self._kill_group()
        if self._reaper is not None and not self._reaper.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reaper), 5)


class SessionSlots:
    """At most ``limit`` concurrent sessions per instance, across every API process.

    Slots are lock files held with ``flock`` for the session's lifetime, so a crashed process
    frees its slots at once.
    """

    def __init__(self, instances_dir: Path, limit: int) -> None:
        # Next to each instance's own files, so they go when the instance's directory does.
        self.instances_dir = instances_dir
        self.limit = limit

    def acquire(self, instance_id: str) -> int | None:
        """An open descriptor holding a slot (close it to release), or None when all are taken."""
        d = self.instances_dir / instance_id / "exec-slots"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(self.limit):
            fd = os.open(d / f"slot-{i}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return fd
        return None
