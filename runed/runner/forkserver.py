"""The controller's end of the zygote (:mod:`runed.runner.zygote`): start it, ask it for shims, replace it.

A zygote is started on first use, in its own session, with one end of a socket pair as its stdin:
no socket file, so nothing else on the host can ask it to start a process, and a controller that
ends (however it ends) closes its end, which tells the zygote to stop serving. A zygote found dead
(killed, crashed, not answering in time) is killed and replaced by the next start; when none can
be started the runner falls back to starting each shim as its own interpreter.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from runed.runner import zygote

log = logging.getLogger("runed.runner")

# The directory holding the ``runed`` package, which the zygote imports its module from.
ROOT = str(Path(__file__).parents[2])
BOOT = f"import sys; sys.path.append({ROOT!r}); from runed.runner.zygote import main; sys.exit(main())"
# How long a zygote may take to answer one request before it counts as stuck.
REPLY_TIMEOUT_SECONDS = 10.0
ERR_NAME = "zygote.err"


class ForkServerError(Exception):
    """No shim could be forked (the zygote cannot be started or keeps failing)."""


class ForkServer:
    """One zygote at a time; :meth:`spawn` forks a shim for an instance directory."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        # Shims report the end of their start here (their pid, one line each): the read end is
        # watched by the controller's loop, the write end is handed to every zygote.
        self.report_r, self._report_w = os.pipe()
        os.set_blocking(self.report_r, False)
        # Non-blocking for every writer (one open file): a full pipe drops a report, never stalls a shim.
        os.set_blocking(self._report_w, False)

    def _start(self, workdir: Path) -> None:
        self.stop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with (workdir / ERR_NAME).open("ab") as err:
                self.proc = subprocess.Popen(
                    # The directory is the last argument, as for a shim: tools see which data dir it serves.
                    [sys.executable, "-I", "-S", "-c", BOOT, str(workdir)],
                    stdin=theirs.fileno(),
                    stdout=self._report_w,
                    stderr=err,
                    env={},
                    cwd=str(workdir),
                    start_new_session=True,
                    close_fds=True,
                )
        except OSError as e:
            ours.close()
            raise ForkServerError(f"cannot start the zygote: {e}") from None
        finally:
            theirs.close()
        ours.settimeout(REPLY_TIMEOUT_SECONDS)
        self._sock = ours

    def spawn(self, directory: Path, env: dict[str, str]) -> tuple[int, int | None]:
        """Fork a shim for ``directory`` with the instance's ``env``: (shim pid, its start time).

        The zygote is started if there is none, and replaced once if it fails to answer.
        """
        why = "no zygote"
        for _ in range(2):
            if self._sock is None or self.proc is None or self.proc.poll() is not None:
                self._start(directory.parent)
            assert self._sock is not None
            try:
                self._sock.sendall(zygote.frame({"dir": str(directory), "env": env}, json.dumps))
                reply = self._recv()
            except (OSError, EOFError, ValueError) as e:
                why = f"zygote failed: {e or type(e).__name__}"
                log.warning("%s; starting a new one", why)
                self.stop()
                continue
            if "error" in reply:
                raise ForkServerError(str(reply["error"]))
            start = reply.get("start")
            return int(reply["pid"]), None if start is None else int(start)
        raise ForkServerError(why)

    def _recv(self) -> dict[str, Any]:
        assert self._sock is not None
        head = self._recv_exact(zygote.HEADER)
        body = self._recv_exact(int.from_bytes(head, "big"))
        reply = json.loads(body)
        if not isinstance(reply, dict):
            raise ValueError("reply is not an object")
        return reply

    def _recv_exact(self, n: int) -> bytes:
        assert self._sock is not None
        buf = b""
        while len(buf) < n:
            chunk = self._sock.recv(n - len(buf))
            if not chunk:
                raise EOFError("zygote closed the connection")
            buf += chunk
        return buf

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
        """
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
