"""`rune logs` and `rune exec` against the shop app on a real runed: prefixes, colours, follow, TTY, signals."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import select
import signal
import struct
import termios
from pathlib import Path

from tests.e2e.rune import Rune, rune_command
from tests.support import eventually


def test_logs_prefixed_per_instance_and_stream_filter(rune: Rune, cast_app: Path) -> None:
    def has_both() -> str:
        out = rune("logs", "web").stdout
        assert "[web-0] greeting hello pw-len 12" in out and "[web-1] greeting hello" in out
        return out

    eventually(has_both, timeout=15)
    err = rune("logs", "web", "--stderr")
    assert "to-stderr" in err.stdout and "tick" not in err.stdout
    filtered = rune("logs", "web", "--filter", "greeting", "--no-prefix")
    assert filtered.stdout.splitlines() and all(ln.startswith("greeting") for ln in filtered.stdout.splitlines())
    tail = rune("logs", "web", "--tail", "1", "--timestamps").stdout.splitlines()
    assert 1 <= len(tail) <= 2 and all("T" in ln.split()[1] for ln in tail)
    events = rune("logs", "web", "--events", "--stderr").stdout.splitlines()
    assert "[web-0] [event] Starting" in events and "[web-0] to-stderr" in events
    assert any(ln.startswith("[web-1] [event] Started: pid ") for ln in events), events
    assert "[event]" not in rune("logs", "web", "--stderr").stdout


def test_logs_colour_each_instance_on_a_terminal(rune: Rune, cast_app: Path) -> None:
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.environ.clear()
            os.environ.update(rune.env())
            cmd = rune_command()
            os.execv(cmd[0], [*cmd, "logs", "web", "--filter", "greeting"])
        finally:
            os._exit(127)
    out = bytearray()
    try:
        while True:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO once the child has exited and the pty is drained
                break
            if not chunk:
                break
            out.extend(chunk)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    text = out.decode()
    colours = {text[i : text.index("m", i)] for i in range(len(text)) if text.startswith("\x1b[3", i)}
    assert "[web-0]" in text and "[web-1]" in text and len(colours) == 2, text
    plain = rune("logs", "web", "--filter", "greeting")
    assert "\x1b[" not in plain.stdout


def test_logs_follow_streams_new_lines(rune: Rune, cast_app: Path, tmp_path: Path) -> None:
    out = tmp_path / "follow.txt"
    p = rune.popen("logs", "-f", "web", "--since", "1s", out=out)

    def ticks() -> set[str]:
        seen = {ln.split()[-1] for ln in out.read_text().splitlines() if " tick " in ln}
        assert len(seen) >= 5
        return seen

    eventually(ticks, timeout=20)
    assert p.poll() is None, "a follow stream keeps running"


def test_exec_passes_exit_code_and_stdin(rune: Rune, cast_app: Path) -> None:
    r = rune("exec", "web", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert r.returncode == 7
    assert r.stdout == "out\n" and "err" in r.stderr
    cat = rune("exec", "-i", "web", "--", "cat", input="piped input\n")
    assert cat.returncode == 0 and cat.stdout == "piped input\n"
    env = rune("exec", "--env", "FOO=bar", "--workdir", "/", "web", "--", "sh", "-c", "echo $FOO $(pwd)")
    assert env.stdout.strip() == "bar /"
    by_name = rune("exec", "web-1", "--", "sh", "-c", "echo $RUNE_INSTANCE_NAME")
    assert by_name.returncode == 0 and by_name.stdout.strip() == "web-1"
    missing = rune("exec", "nope", "--", "true")
    assert missing.returncode in (3, 7) and "Traceback" not in missing.stderr


# Prints its terminal size, then waits until a resize reaches it and exits 3.
WAIT_FOR_RESIZE = 'stty size; while [ "$(stty size)" = "30 100" ]; do sleep 0.05; done; stty size; exit 3'


def test_exec_tty_raw_terminal_follows_resizes(rune: Rune, cast_app: Path) -> None:
    pid, fd = pty.fork()
    if pid == 0:  # the child becomes `rune` on the pty's slave side
        try:
            os.environ.clear()
            os.environ.update(rune.env())
            cmd = rune_command()
            os.execv(cmd[0], [*cmd, "exec", "-t", "web", "--", "sh", "-c", WAIT_FOR_RESIZE])
        finally:
            os._exit(127)
    try:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        out = bytearray()

        def read_until(marker: bytes) -> bool:
            if select.select([fd], [], [], 0.1)[0]:
                out.extend(os.read(fd, 1024))
            return marker in out

        eventually(lambda: read_until(b"30 100"), timeout=20)
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        eventually(lambda: read_until(b"40 120"), timeout=20)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 3
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)


def test_exec_forwards_ctrl_c_to_the_remote_command(rune: Rune, cast_app: Path, tmp_path: Path) -> None:
    out = tmp_path / "exec.txt"
    script = "trap 'echo got-int; exit 42' INT; echo armed; while true; do sleep 0.05; done"
    p = rune.popen("exec", "web", "--", "sh", "-c", script, out=out)
    eventually(lambda: "armed" in out.read_text(), timeout=20)
    p.send_signal(signal.SIGINT)
    assert p.wait(20) == 42
    assert "got-int" in out.read_text()
