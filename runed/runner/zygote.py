"""The shim maker ("zygote"): one resident process per controller that forks a shim per instance.

Why: a shim started as its own interpreter costs an interpreter start (≈23 ms of CPU, ≈2.6 MB of
private memory, bench/README.md); a shim forked from this warm process, which has already imported
the shim module, costs a fork and shares every page it does not write with the zygote and its
siblings. A forked shim is an ordinary shim once it runs: its own session (so neither runed's
process group nor the zygote's end touch it), recorded and re-adopted by pid and start time.

Started by :class:`runed.runner.forkserver.ForkServer` as ``python -I -S`` in its own session. It
stays single-threaded (forking from a threaded process is unsafe) and imports nothing beyond the
shim's own modules. Fd 0 is a stream socket to the controller: each request is a length-prefixed
JSON object ``{"dir": ..., "env": {...}, "attempt": ..., "native": ...}`` (the instance's
environment, resolved secrets included, travels only over this socket, never through argv or disk;
the attempt is the start the shim claims, see :data:`runed.runner.shim.CLAIM_PREFIX`; ``native``,
when given, is the native shim to start instead of forking a Python one, :mod:`runed.runner.native`);
the reply is ``{"pid": ..., "start": ...}`` (with ``"native_failed"``: why the native shim could not
be started, so a Python one was forked) or ``{"error": ...}``. Fd 1 is the write end of the
runner's start-report pipe, handed to every shim (:func:`runed.runner.shim.run`). When the
controller goes away (end of file), the zygote stays until its shims have ended, then exits. It
never reaps them one by one: with SIGCHLD ignored, the kernel does as each ends.
"""

from __future__ import annotations

import errno
import gc
import os

# What every shim loads to start its instance (``shim.spawn``): loaded here once, shared by every
# shim, instead of from disk in each of them (≈0.4 ms of a start for ``resource`` alone).
import resource  # noqa: F401
import sys
from _posixsubprocess import fork_exec  # noqa: F401

from runed.runner import shim

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    from typing import Any
else:
    import _signal

CHANNEL_FD = 0
REPORT_FD = 1
HEADER = 4
# The report pipe's descriptor in a native shim (its stdin, stdout and stderr are /dev/null).
NATIVE_REPORT_FD = 3
MAX_MESSAGE = 64 << 20
SHIM_ERR = "shim.err"
# Why a start of the native shim fails when its binary is gone or no longer runs here (deleted,
# replaced by one for another machine, its file system remounted noexec): a Python shim runs instead.
NATIVE_GONE = (errno.ENOENT, errno.EACCES, errno.ENOEXEC, errno.EPERM)


def recv_exact(fd: int, n: int) -> bytes | None:
    """``n`` bytes from ``fd``; None at end of file before the first byte."""
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            if buf:
                raise EOFError("message cut short")
            return None
        buf += chunk
    return buf


def recv_message(fd: int) -> Any:
    """One length-prefixed JSON message, or None when the peer has gone."""
    head = recv_exact(fd, HEADER)
    if head is None:
        return None
    size = int.from_bytes(head, "big")
    if size > MAX_MESSAGE:
        raise ValueError(f"message of {size} bytes")
    body = recv_exact(fd, size) if size else b""
    if body is None:
        raise EOFError("message cut short")
    return shim.loads(body.decode("utf-8"))


def frame(value: Any, dumps: Any = shim.dumps) -> bytes:
    """``value`` as one length-prefixed JSON message."""
    body: bytes = dumps(value).encode("utf-8")
    return len(body).to_bytes(HEADER, "big") + body


def send_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _become_shim(directory: str, env: dict[str, str], attempt: str) -> None:
    """In the forked child: detach (new session, own descriptors) and run the shim; never returns."""
    code = 1
    try:
        os.setsid()
        _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
        shim.ignore_outside_signals()
        os.chdir(directory)
        report = os.dup(REPORT_FD)
        null = os.open(os.devnull, os.O_RDWR)
        # The shim writes nothing to its stderr unless it fails: shim.err is created then (below),
        # not for every start (a file created per instance, ≈30 µs of a start on a warm ext4, far more
        # in a directory block group the file system touches for the first time).
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        # Nothing of the zygote's reaches the shim (its socket, its wake-up pipe) but the report pipe.
        os.closerange(3, report)
        os.closerange(report + 1, os.sysconf("SC_OPEN_MAX"))
        try:
            # Shown by ps/top instead of the zygote's name.
            shim.write_new("/proc/self/comm", b"rune-shim")
        except OSError:
            pass
        code = shim.run(directory, env, report, attempt)
    except BaseException as e:
        try:
            try:
                os.dup2(os.open(os.path.join(directory, SHIM_ERR), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), 2)
            except OSError:
                pass  # the traceback goes nowhere, the shim's end is seen all the same
            sys.excepthook(type(e), e, e.__traceback__)
            sys.stderr.flush()
        finally:
            os._exit(1)
    # No interpreter finalisation: the records are written and closed, nothing else is worth its CPU.
    os._exit(code)


def spawn_native(program: str, directory: str, env: dict[str, str], attempt: str) -> int:
    """Start the native shim (``shim.c``) for ``directory``: no fork of this interpreter, a vfork and an exec.

    Detached as a forked shim is (a session of its own, nothing of the zygote's but the report
    pipe, as its descriptor :data:`NATIVE_REPORT_FD`); the environment is the instance's, with the
    attempt and that descriptor's number (the shim takes both out before the instance sees it).
    """
    shim_env = {**env, shim.ATTEMPT_ENV: attempt, shim.REPORT_FD_ENV: str(NATIVE_REPORT_FD)}
    actions = [
        (os.POSIX_SPAWN_DUP2, REPORT_FD, NATIVE_REPORT_FD),
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDWR, 0),
        (os.POSIX_SPAWN_DUP2, 0, 1),
        (os.POSIX_SPAWN_DUP2, 0, 2),
    ]
    # SIGCHLD at its default (ignored here): the shim reads its instance's exit status.
    return os.posix_spawn(
        program, [program, directory], shim_env, file_actions=actions, setsid=True, setsigdef=(_signal.SIGCHLD,)
    )


def fork_shim(request: dict[str, Any]) -> dict[str, Any]:
    directory, env = str(request["dir"]), request.get("env") or {}
    if not isinstance(env, dict):
        return {"error": "env must be an object"}
    attempt = str(request.get("attempt") or "")
    env = {str(k): str(v) for k, v in env.items()}
    program = request.get("native")
    failed = None
    if program:
        try:
            pid = spawn_native(str(program), directory, env, attempt)
        except OSError as e:
            if e.errno not in NATIVE_GONE:
                raise
            # The binary is gone (or no longer runs here): this start runs under the Python shim,
            # and the controller is told why.
            failed = f"{program}: {e.strerror or e}"
        else:
            return {"pid": pid, "start": shim.proc_start_time(pid, zombie=True)}
    pid = os.fork()
    if pid == 0:
        _become_shim(directory, env, attempt)
    reply = {"pid": pid, "start": shim.proc_start_time(pid, zombie=True)}
    return reply if failed is None else {**reply, "native_failed": failed}


def serve() -> int:
    # The zygote outlives runed (its shims are in sessions of their own; it is in its own too).
    _signal.signal(_signal.SIGHUP, _signal.SIG_IGN)
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    # Ended shims are reaped by the kernel as they end, without waking this process: a delete of a
    # thousand instances would otherwise wake it about as many times. A shim sets SIGCHLD back to
    # its default before it starts its instance (it reads its instance's exit status).
    _signal.signal(_signal.SIGCHLD, _signal.SIG_IGN)
    # What exists now is shared with every shim; frozen, a collection in a shim does not write to it.
    gc.collect()
    gc.freeze()
    while True:
        try:
            request = recv_message(CHANNEL_FD)
        except (OSError, EOFError, ValueError):
            request = None
        if request is None:
            break
        try:
            reply = fork_shim(request)
        except (OSError, KeyError, TypeError) as e:
            reply = {"error": f"cannot fork a shim: {e}"}
        try:
            send_all(CHANNEL_FD, frame(reply))
        except OSError:
            break
    # The controller is gone: stay until every shim has ended (wait returns once none is left).
    for fd in (CHANNEL_FD, REPORT_FD):
        os.close(fd)
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return 0


def main() -> int:
    return serve()


if __name__ == "__main__":
    sys.exit(main())
