"""Per-instance shim: parent of one instance process, writes its JSON-lines logs and its exit record.

Run as ``python -m runed.runner.shim <instance_dir>`` in its own session, so neither a runed
restart nor ``kill -9`` of runed's process group touches it or the instance. The launch spec is
read from ``<instance_dir>/launch.json`` (no environment in it: the instance's environment is
this process's own environment, so resolved secret values never land on disk). The instance runs
in its own process group (pgid = pid) so a stop signals the whole tree but not the shim, which
then records how it ended in ``exit.json``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import resource
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

LOG_NAME = "log.jsonl"
EXIT_NAME = "exit.json"
PID_NAME = "pid.json"
LAUNCH_NAME = "launch.json"
# After the instance exits, the shim reads what is left in its pipes until they are quiet this
# long (a grandchild may keep them open), and for no longer than the second bound in all.
DRAIN_QUIET_SECONDS = 0.5
DRAIN_MAX_SECONDS = 5.0
# Variables that tell the shim about itself; the instance never sees them.
SHIM_ENV_PREFIX = "RUNED_SHIM_"


def proc_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/<pid>/stat), None if gone.

    A pid alone can be reused after the process dies; pid plus start time cannot.
    """
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    if fields and fields[0] == "Z":
        return None  # a zombie is as good as gone
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def rfc3339_ns(ns: int) -> str:
    """UTC RFC 3339 with nanoseconds, e.g. ``2026-11-23T18:45:00.123456789Z``."""
    secs, frac = divmod(ns, 1_000_000_000)
    base = _dt.datetime.fromtimestamp(secs, tz=_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{frac:09d}Z"


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def last_seq(directory: Path) -> int:
    """The highest seq already written, so numbering continues across restarts and rotations."""
    for name in (LOG_NAME, LOG_NAME + ".1"):
        path = directory / name
        try:
            with path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 65536))
                tail = f.read().splitlines()
        except OSError:
            continue
        for raw in reversed(tail):
            try:
                return int(json.loads(raw)["seq"])
            except (ValueError, KeyError, TypeError):
                continue
    return 0


# Below this many free bytes on the log's filesystem lines are dropped instead of written, so the
# store and everything else on the data disk keep room (controller.log_min_free_bytes; 0: no floor).
DEFAULT_MIN_FREE_BYTES = 32 << 20
# Writing resumes only with this much more than the floor free, so it does not flap at the edge.
RESUME_SLACK_BYTES = 1 << 20
# The free space is looked at (one fstatvfs) at least this often while writing, and after at most
# half the room above the floor has been written: rarely when the disk is roomy, often near the floor.
SPACE_CHECK_SECONDS = 1.0
MIN_CHECK_BYTES = 64 << 10
_NO_SPACE = (28, 122)  # ENOSPC, EDQUOT


class LogWriter:
    """Appends one JSON object per line and rotates by size: log.jsonl -> log.jsonl.1 -> … .

    Keeps ``min_free_bytes`` free on the log's filesystem: below it (or when a write fails for lack
    of space) lines are counted and dropped, never written in part. Once there is room again the
    next line is preceded by a marker line saying how many were dropped. Dropped lines take no
    ``seq``: the marker is the record of them.
    """

    def __init__(self, directory: Path, max_bytes: int, backups: int, min_free_bytes: int = 0) -> None:
        self.directory = directory
        self.max_bytes = max(1024, max_bytes)
        self.backups = max(0, backups)
        self.min_free = max(0, min_free_bytes)
        self.seq = last_seq(directory)
        self.path = directory / LOG_NAME
        # Unbuffered: each line is one write(2), visible to followers at once, never half-buffered.
        self.f: IO[bytes] = self.path.open("ab", buffering=0)
        self.size = self.f.tell()
        self.dropped = 0  # lines dropped since the last line written
        self._checked = -SPACE_CHECK_SECONDS  # monotonic time of the last look at the free space
        self._budget = 0  # bytes that may be written before looking again
        self._torn = False  # a write stopped mid-line: the next one starts on a fresh line

    def _rotate(self) -> None:
        self.f.close()
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for i in range(self.backups - 1, 0, -1):
                src = self.directory / f"{LOG_NAME}.{i}"
                if src.exists():
                    src.replace(self.directory / f"{LOG_NAME}.{i + 1}")
            self.path.replace(self.directory / f"{LOG_NAME}.1")
        self.f = self.path.open("ab", buffering=0)
        self.size = 0
        self._torn = False

    def _room(self, n: int) -> bool:
        """Whether ``n`` more bytes keep the filesystem above the floor (a syscall only now and then)."""
        now = time.monotonic()
        recent = now - self._checked < SPACE_CHECK_SECONDS
        if self.dropped and recent:
            return False  # dropping: look again after a second, not per line
        if not self.min_free:
            return True  # no floor: only a failed write stops lines
        if recent and n <= self._budget:
            self._budget -= n
            return True
        self._checked = now
        try:
            st = os.fstatvfs(self.f.fileno())
        except (OSError, ValueError):
            return True  # cannot tell: the write itself will say
        room = st.f_bavail * st.f_frsize - self.min_free
        if self.dropped:
            room -= RESUME_SLACK_BYTES
        if room < n:
            return False
        self._budget = max(MIN_CHECK_BYTES, room // 2) - n
        return True

    def _record(self, stream: str, text: str) -> bytes:
        rec = {"seq": self.seq + 1, "ts": rfc3339_ns(time.time_ns()), "stream": stream, "line": text}
        return (json.dumps(rec, ensure_ascii=False) + "\n").encode()

    def _append(self, data: bytes) -> bool:
        """Write one record (rotating first when due); False when the disk had no room for it."""
        if self._torn:
            data = b"\n" + data
        try:
            if self.f.closed or (self.size and self.size + len(data) > self.max_bytes):
                self._rotate()
            view = memoryview(data)
            while view:
                n = self.f.write(view) or 0
                self.size += n
                self._torn = True
                view = view[n:]
        except OSError as e:
            if e.errno not in _NO_SPACE:
                raise
            self._checked = time.monotonic()  # look again in a second, not at the next line
            return False
        self._torn = False
        self.seq += 1
        return True

    def _flush_marker(self) -> bool:
        """Write the dropped-lines marker, if any is due; False when the disk still has no room."""
        if not self.dropped:
            return True
        short = f"had less than {self.min_free} bytes free" if self.min_free else "was full"
        text = f"runed: {self.dropped} lines dropped: the disk holding this log {short}"
        if not self._append(self._record("stderr", text)):
            return False
        self.dropped = 0
        return True

    def write(self, stream: str, line: bytes) -> None:
        # Estimate before encoding, so a line that is dropped costs no JSON work.
        if not self._room(len(line) + 128 + (256 if self.dropped else 0)):
            self.dropped += 1
            return
        text = line.decode("utf-8", errors="replace")
        if not (self._flush_marker() and self._append(self._record(stream, text))):
            self.dropped += 1

    def close(self) -> None:
        # The last word on lines dropped at the end, when the disk takes it (the floor no longer matters).
        self._flush_marker()
        self.f.close()


def _preexec(rlimit_as: int | None) -> Any:
    def setup() -> None:
        if rlimit_as:
            resource.setrlimit(resource.RLIMIT_AS, (rlimit_as, rlimit_as))
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    return setup


def run(directory: Path) -> int:
    spec = json.loads((directory / LAUNCH_NAME).read_text())
    (directory / EXIT_NAME).unlink(missing_ok=True)
    (directory / PID_NAME).unlink(missing_ok=True)
    writer = LogWriter(
        directory,
        int(spec.get("max_bytes", 10 << 20)),
        int(spec.get("backups", 3)),
        int(spec.get("min_free_bytes", DEFAULT_MIN_FREE_BYTES)),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(SHIM_ENV_PREFIX)}
    try:
        child = subprocess.Popen(
            spec["argv"],
            cwd=spec.get("cwd") or None,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            process_group=0,
            user=spec.get("uid"),
            group=spec.get("gid"),
            extra_groups=[] if spec.get("gid") is not None else None,
            preexec_fn=_preexec(spec.get("rlimit_as")),
            umask=int(spec.get("umask", -1)),
            close_fds=True,
        )
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        writer.write("stderr", f"runed: cannot start {spec['argv'][0]!r}: {e}".encode())
        writer.close()
        write_json_atomic(
            directory / EXIT_NAME, {"code": 127, "signal": None, "ts": time.time(), "error": f"cannot start: {e}"}
        )
        return 0
    write_json_atomic(
        directory / PID_NAME,
        {
            "pid": child.pid,
            "pid_start": proc_start_time(child.pid),
            "shim_pid": os.getpid(),
            "shim_start": proc_start_time(os.getpid()),
            "ts": time.time(),
        },
    )
    assert child.stdout is not None and child.stderr is not None
    sel = selectors.DefaultSelector()
    partial: dict[str, bytes] = {"stdout": b"", "stderr": b""}
    for stream, pipe in (("stdout", child.stdout), ("stderr", child.stderr)):
        os.set_blocking(pipe.fileno(), False)
        sel.register(pipe, selectors.EVENT_READ, stream)
    exited_at: float | None = None
    heard_at = time.monotonic()
    while sel.get_map():
        # Once the child is gone, what it left in the pipes is read to the end (the exit record
        # comes after its last line); but a grandchild that keeps the pipes open must not keep
        # the shim alive forever: quiet for a moment, or a bounded drain, ends it.
        now = time.monotonic()
        if exited_at is None and child.poll() is not None:
            exited_at = now
        if exited_at is not None:
            quiet = now - max(heard_at, exited_at)
            if quiet > DRAIN_QUIET_SECONDS or now - exited_at > DRAIN_MAX_SECONDS:
                break
        for key, _ in sel.select(timeout=0.2):
            heard_at = time.monotonic()
            stream = str(key.data)
            try:
                chunk = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                sel.unregister(key.fileobj)
                continue
            lines = (partial[stream] + chunk).split(b"\n")
            partial[stream] = lines.pop()
            # A single line without newline is still capped so memory stays bounded.
            if len(partial[stream]) > 65536:
                lines.append(partial[stream])
                partial[stream] = b""
            for line in lines:
                writer.write(stream, line.rstrip(b"\r"))
    for stream, rest in partial.items():
        if rest:
            writer.write(stream, rest)
    rc = child.wait()
    # Children the instance left behind in its group end with it, as in a container.
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    child.stdout.close()
    child.stderr.close()
    writer.close()
    code, sig = (None, -rc) if rc < 0 else (rc, None)
    write_json_atomic(directory / EXIT_NAME, {"code": code, "signal": sig, "ts": time.time()})
    return 0


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python -m runed.runner.shim <instance_dir>", file=sys.stderr)
        return 2
    # The shim outlives runed; a terminal hang-up or ^C aimed at runed is not for it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return run(Path(sys.argv[1]))


if __name__ == "__main__":
    sys.exit(main())
