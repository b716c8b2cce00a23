"""The controller's end of the zygote (:mod:`runed.runner.zygote`): start it, ask it for shims, replace it.

A zygote is started on first use, in its own session, with one end of a socket pair as its stdin:
no socket file, so nothing else on the host can ask it to start a process, and a controller that
ends (however it ends) closes its end, which tells the zygote to stop serving. A zygote found dead
(killed, crashed, not answering in time) is killed and replaced by the next start; when none can
be started the runner falls back to starting each shim as its own interpreter.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

from runed.core import fdwait
from runed.runner import zygote
from runed.runner.base import helper

log = logging.getLogger("runed.runner")

# The directory holding the ``runed`` package, which the zygote imports its module from.
ROOT = str(Path(__file__).parents[2])
BOOT = f"import sys; sys.path.append({ROOT!r}); from runed.runner.zygote import main; sys.exit(main())"
# How long a zygote may take to take a request before it counts as stuck.
REPLY_TIMEOUT_SECONDS = 10.0
ERR_NAME = "zygote.err"


def answer_key(directory: Path, attempt: str) -> str:
    """What the answer to a request is filed under in :attr:`ForkServer.forked`: its attempt, if any."""
    return attempt or str(directory)


def serving(workdir: Path, exclude: int | None = None) -> bool:
    """Whether a zygote other than ``exclude`` still takes requests for ``workdir``: one whose
    controller's socket (its fd 0) is open. A zygote whose controller is gone closes it and only
    reaps its shims, so a start asked of it and not forked by then never will be."""
    target = os.fsencode(str(workdir))
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == exclude:
            continue
        try:
            argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if target in argv and any(b"runed.runner.zygote" in a for a in argv) and os.path.exists(f"/proc/{name}/fd/0"):
            return True
    return False


class ForkServerError(Exception):
    """No shim could be forked (the zygote cannot be started or keeps failing)."""


class ForkServer:
    """One zygote at a time; :meth:`request` asks it for a shim for an instance directory."""

    def __init__(self) -> None:
        # Why the zygote could not start the native shim it was asked to (the latest time; it
        # forked a Python one instead), until the runner takes note of it.
        self.native_failed: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        # Shims report the end of their start here (their pid, one line each): the read end is
        # watched by the controller's loop, the write end is handed to every zygote.
        self.report_r, self._report_w = os.pipe()
        os.set_blocking(self.report_r, False)
        # Non-blocking for every writer (one open file): a full pipe drops a report, never stalls a shim.
        os.set_blocking(self._report_w, False)
        # Requests not answered yet, by :func:`answer_key`, in the order asked (the zygote answers in order).
        self._awaiting: collections.deque[str] = collections.deque()
        self._inbox = b""
        # Answers not yet taken by the runner, by :func:`answer_key`: (shim pid, start time) or why no
        # shim was forked. By attempt, so a late answer to an earlier start of a directory is never
        # taken for the answer to its current one.
        self.forked: dict[str, tuple[int, int | None] | str] = {}
        # Requests whose answers nobody will take (their starts were given up): dropped as they come.
        self._unwanted: set[str] = set()

    def _start(self, workdir: Path) -> None:
        self.stop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.proc = helper(
                # The directory is the last argument, as for a shim: tools see which data dir it serves.
                [sys.executable, "-I", "-S", "-c", BOOT, str(workdir)],
                workdir,
                ERR_NAME,
                stdin=theirs.fileno(),
                stdout=self._report_w,
            )
        except OSError as e:
            ours.close()
            raise ForkServerError(f"cannot start the zygote: {e}") from None
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours

    def request(self, directory: Path, env: dict[str, str], attempt: str = "", native: str | None = None) -> None:
        """Ask for a shim for ``directory`` with the instance's ``env``; the answer comes to :attr:`forked`.

        ``attempt``: the start the shim is for (it claims it before running anything). ``native``:
        the native shim to start (None: the zygote forks a Python one).

        Requests are pipelined: the controller does not wait for each fork (on a loaded machine a
        round trip costs a scheduling delay of the zygote, ≈15 ms here, more than the fork itself).
        The zygote is started if there is none, and replaced once if it fails.
        """
        why = "no zygote"
        request = {"dir": str(directory), "env": env, "attempt": attempt, "native": native}
        data = zygote.frame(request, json.dumps)
        for _ in range(2):
            if self._sock is None or self.proc is None or self.proc.poll() is not None:
                self._start(directory.parent)
            try:
                self._send(data)
            except (OSError, EOFError, ValueError) as e:
                why = f"zygote failed: {e or type(e).__name__}"
                log.warning("%s; starting a new one", why)
                self.stop()
                continue
            self._awaiting.append(answer_key(directory, attempt))
            return
        raise ForkServerError(why)

    def _send(self, data: bytes) -> None:
        sock = self._sock
        assert sock is not None
        view = memoryview(data)
        while view:
            try:
                view = view[sock.send(view) :]
            except BlockingIOError:
                # The zygote is busy answering: take its replies meanwhile (it may be blocked on them).
                readable, writable = fdwait.ready(sock.fileno(), REPLY_TIMEOUT_SECONDS, write=True)
                if not readable and not writable:
                    raise TimeoutError("zygote not answering") from None
                if readable:
                    self._read()

    def collect(self) -> None:
        """Take in the replies that arrived; a broken zygote is let go (what it did not answer stays unanswered)."""
        if self._sock is None or not self._awaiting:
            return
        try:
            self._read()
        except (OSError, EOFError, ValueError) as e:
            log.warning("zygote failed: %s; the next start starts a new one", e or type(e).__name__)
            self.stop()

    def _read(self) -> None:
        sock = self._sock
        assert sock is not None
        while True:
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                break
            if not chunk:
                raise EOFError("zygote closed the connection")
            self._inbox += chunk
        head = zygote.HEADER
        while len(self._inbox) >= head:
            size = int.from_bytes(self._inbox[:head], "big")
            if len(self._inbox) < head + size:
                break
            reply = json.loads(self._inbox[head : head + size])
            self._inbox = self._inbox[head + size :]
            if not isinstance(reply, dict) or not self._awaiting:
                raise ValueError("unexpected reply")
            key = self._awaiting.popleft()
            if "native_failed" in reply:
                self.native_failed = str(reply["native_failed"])
            if key in self._unwanted:
                self._unwanted.discard(key)
            elif "error" in reply:
                self.forked[key] = str(reply["error"])
            else:
                start = reply.get("start")
                self.forked[key] = (int(reply["pid"]), None if start is None else int(start))

    def forget(self, key: str) -> None:
        """Nobody will take the answer filed under ``key`` (see :func:`answer_key`): drop it, now or when it comes."""
        self.forked.pop(key, None)
        if key in self._awaiting:
            self._unwanted.add(key)

    def drain(self) -> list[int]:
        """The shim pids reported since the last call (whose starts are over)."""
        data = b""
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while chunk := os.read(self.report_r, 65536):
                data += chunk
        out = []
        for word in data.split():
            with contextlib.suppress(ValueError):
                out.append(int(word))
        return out

    def reap(self) -> None:
        """Collect a zygote that ended (it is our child)."""
        if self.proc is not None and self.proc.poll() is not None:
            self.stop()

    def stop(self, *, kill: bool = True) -> None:
        """Let go of the zygote: closing our end tells it to stop serving (its shims run on).

        ``kill``: a zygote that failed may be stuck, so it is killed (its shims run on all the same).
        Requests it has not answered stay unanswered: their shims are found by their pid record, or
        their starts time out.
        """
        self._awaiting.clear()
        self._unwanted.clear()
        self._inbox = b""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        proc, self.proc = self.proc, None
        if kill and proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1.0)

    def close(self, wait: float = 0.0) -> None:
        """No more shims from here: the zygote ends once its shims have (waited for up to ``wait`` seconds)."""
        proc = self.proc
        self.stop(kill=False)
        if proc is not None and wait > 0:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait)
        for fd in (self.report_r, self._report_w):
            with contextlib.suppress(OSError):
                os.close(fd)
