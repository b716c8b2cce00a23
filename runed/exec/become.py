"""A command started as an instance runs it (its user and group), dying with the process that starts it.

Every exec session's command, and an exec probe's under another user, starts through :data:`SHIM`,
a child of the process that serves it. The shim takes the instance's user and group (as the
instance's own shim does: no supplementary groups with a group), then dies with its parent
(Linux's parent-death signal, set after the credentials change that clears it; a parent already
gone is not waited for), makes the PTY under a TTY the controlling terminal of the new session (so
SIGWINCH and ^C reach the command), then becomes the command.

Why a shim: Python code between fork and exec in runed itself would be unsafe in a multi-threaded
(gRPC) process, and uvloop's subprocesses take no user or group. It starts as runed's own user and
imports all it needs first, so the interpreter and its library are always within its reach, also
for an instance that runs as a user who could not read them (an interpreter in a private home: a
TTY session there failed with "Permission denied"). Without the signal, an API process killed
mid-session left a command on pipes running on, orphaned, with nobody reading its output or able
to stop it (under a TTY the terminal's hang-up ends it). It costs about 9 ms of an interpreter's
start per command.
"""

from __future__ import annotations

import os
import sys

SHIM = """
import ctypes, fcntl, os, sys, termios, warnings
libc = ctypes.CDLL(None, use_errno=True)
ppid, mode, uid, gid, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
try:
    if gid:
        os.setgroups([])
        os.setregid(int(gid), int(gid))
    if uid:
        os.setreuid(int(uid), int(uid))
except OSError as e:
    sys.stderr.write("exec: cannot run as uid %s gid %s: %s\\n" % (uid or "-", gid or "-", e.strerror))
    sys.stderr.flush(); os._exit(126)
libc.prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
if os.getppid() != ppid:
    os._exit(137)
if mode == "tty":
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
try:
    os.execvp(argv[0], argv)
except FileNotFoundError:
    sys.stderr.write("exec: %s: command not found\\n" % argv[0]); sys.stderr.flush(); os._exit(127)
except OSError as e:
    sys.stderr.write("exec: %s: %s\\n" % (argv[0], e.strerror)); sys.stderr.flush(); os._exit(126)
"""


def argv(command: list[str], uid: int | None = None, gid: int | None = None, *, tty: bool = False) -> list[str]:
    """``command`` run through :data:`SHIM` as ``uid``/``gid`` (None: the caller's), on a TTY or on pipes."""
    who = ["" if uid is None else str(uid), "" if gid is None else str(gid)]
    return [sys.executable, "-I", "-S", "-c", SHIM, str(os.getpid()), "tty" if tty else "pipes", *who, *command]
