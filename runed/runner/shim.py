"""Per-instance shim: parent of one instance process, writes its JSON-lines logs and its exit record.

Forked by the controller's zygote (:mod:`runed.runner.zygote`), or started by the process runner as
an interpreter of its own (:func:`runed.runner.process.shim_argv`), in its own session either way, so
neither a runed restart nor ``kill -9`` of runed's process group touches it or the instance. The
launch spec is read from ``<instance_dir>/launch.json`` (no environment in it: the instance's
environment comes over the zygote's socket, or is this process's own environment, so resolved
secret values never land on disk). The instance runs
in its own process group (pgid = pid) so a stop signals the whole tree but not the shim, which
then records how it ended in ``exit.json``.

One shim runs per instance, so its size is the per-instance cost of supervision. It runs as
``python -I -S`` and imports only what the interpreter has built in or loads as small C modules
(``os``, ``select``, ``_json``, ``_signal``): no ``site``, ``json`` (``re``), ``signal`` (``enum``),
``subprocess`` (``threading``), ``selectors``, ``pathlib`` or ``datetime``. That keeps a shim started
as its own interpreter at ≈2.9 MB PSS instead of ≈6.6 MB, and a forked one under 1 MB
(bench/README.md). It sleeps in ``poll`` until the instance writes or ends (a pidfd), so an idle
shim costs no CPU.
"""

from __future__ import annotations

import os
import select
import sys
import time
from _json import encode_basestring, encode_basestring_ascii, make_scanner

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    from typing import Any

    StrPath = str | os.PathLike[str]
else:
    # The C half of `signal`: the module itself builds its enums at import (≈0.9 MB per shim).
    import _signal

LOG_NAME = "log.jsonl"
EXIT_NAME = "exit.json"
PID_NAME = "pid.json"
LAUNCH_NAME = "launch.json"
# A start is one attempt, named by an id the controller writes into launch.json and hands to the
# shim. ``claim-<attempt>.json`` is created exactly once (link(2) fails on an existing name): by the
# shim before it runs anything (its pid), or by the controller giving up on a start (a fence). So
# whoever comes second knows: a shim that finds the fence runs nothing, a controller that finds the
# claim knows which shim to look at or kill. A restarted controller can thus never start an
# instance a second time while a shim it was not told about still runs (or is still to be forked).
CLAIM_PREFIX = "claim-"
# Sent to the shim by a stop that deletes the instance (its directory goes next): the exit record
# is then not written at all (nobody reads it; an fsync per instance weighed on a thousand-instance
# delete on a busy disk, and the write itself was a quarter of the keeper's time ending them).
# Ignored by default, so a shim started before this existed is not hurt by it. The shim keeps it
# blocked and looks for it pending at the end: sending it wakes nobody (a handler would wake every
# shim of a delete once more, and the sender with them).
DISCARD_SIGNAL = _signal.SIGURG
# The shim outlives runed: a terminal hang-up or ^C aimed at runed is not for it, nor a SIGTERM sent
# to every process of runed's unit (systemctl stop): the instance gets its own, shuts down within its
# grace, and its exit is recorded (SIGKILL ends a shim). The instance gets them back as defaults.
IGNORED = (_signal.SIGHUP, _signal.SIGINT, _signal.SIGTERM)
# After the instance exits, the shim reads what is left in its pipes until they are quiet this
# long (a grandchild may keep them open), and for no longer than the second bound in all.
DRAIN_QUIET_SECONDS = 0.5
DRAIN_MAX_SECONDS = 5.0
# How long the exit record waits for what the instance left in its group to end after SIGKILL.
GROUP_END_SECONDS = 2.0
GROUP_LOOK_SECONDS = 0.02
# Without a pidfd (an old kernel) the end of the instance is polled this often.
POLL_SECONDS = 0.2
# Variables that tell the shim about itself; the instance never sees them.
SHIM_ENV_PREFIX = "RUNED_SHIM_"
# The attempt a shim started as its own interpreter runs (a forked shim gets it with its request).
ATTEMPT_ENV = SHIM_ENV_PREFIX + "ATTEMPT"
# The descriptor a native shim reports its start on (a forked shim gets it as an argument).
REPORT_FD_ENV = SHIM_ENV_PREFIX + "REPORT_FD"
READ_SIZE = 65536


# -- JSON without the json package (its import pulls in re) -------------------------------------
class _Context:
    """What the C scanner of ``_json`` reads from a decoder: plain JSON, as ``json.loads`` decodes it."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float  # NaN, Infinity, -Infinity


_scan = make_scanner(_Context())  # type: ignore[arg-type]  # the stub wants a scanner; C reads the attributes


def loads(text: str) -> Any:
    """``json.loads`` for one JSON document (ValueError when it is not one)."""
    text = text.strip()
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        raise ValueError("not JSON") from None
    if end != len(text):
        raise ValueError("extra data after JSON")
    return value


def dumps(value: Any) -> str:
    """``json.dumps`` (default separators, ASCII) of None, bools, numbers, strings, lists and dicts."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return encode_basestring_ascii(value)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{encode_basestring_ascii(str(k))}: {dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(dumps(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


# Small files are read and written with os calls, not io's file objects: one open, read or write,
# close, where ``open()`` adds an fstat, an ioctl, two lseeks and the buffered and text layers'
# objects (≈25 µs a file; a shim's start reads or writes seven, the controller two per start).
def read_bytes(path: StrPath) -> bytes:
    """The whole of a small file (OSError as ``open`` raises it)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = b""
        while chunk := os.read(fd, 65536):
            data += chunk
        return data
    finally:
        os.close(fd)


def write_new(path: StrPath, data: bytes) -> None:
    """Write ``data`` as the whole of ``path`` (created 0644, or truncated)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def read_json(path: StrPath) -> Any:
    return loads(read_bytes(path).decode("utf-8"))


def write_json_atomic(path: StrPath, data: dict[str, Any]) -> None:
    path = os.fspath(path)
    tmp = path + ".tmp"
    write_new(tmp, dumps(data).encode())
    os.replace(tmp, path)


def claim_name(attempt: str) -> str:
    """The name of an attempt's claim record in the instance directory."""
    return f"{CLAIM_PREFIX}{attempt}.json"


def create_exclusive(path: StrPath, data: dict[str, Any]) -> bool:
    """Create ``path`` holding ``data`` unless it exists (then False): written aside, then linked in,
    so nobody ever reads it half written."""
    path = os.fspath(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    write_new(tmp, dumps(data).encode())
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    return True


# The exit and pid records are reserved at start: a placeholder of this size is written while there
# is room, then overwritten in place (pwrite needs no new blocks) and renamed, so a disk filled by
# the instance cannot cost its exit code. The placeholder is not synced: the space is taken when
# write(2) returns (tmpfs allocates, ext4 and XFS reserve delayed-allocation blocks then), and two
# fsyncs per start cost more than the rest of a forked shim's start on a busy disk (bench/README.md).
RESERVE_BYTES = 4096
RESERVE_SUFFIX = ".reserve"


class Reserved:
    """A record file whose blocks are taken at start; :meth:`commit` writes it without new space."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None
        tmp = path + RESERVE_SUFFIX
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError:
            return  # no room even now: commit falls back to an ordinary write
        try:
            view = memoryview(b" " * RESERVE_BYTES)
            while view:
                view = view[os.write(fd, view) :]
        except OSError:
            os.close(fd)
            return
        self.fd = fd

    def commit(self, data: dict[str, Any], *, sync: bool = True) -> None:
        """Write ``data`` as the record (padded with blanks to the reserved size), then put it in place.

        ``sync``: on disk before it is in place (the exit record; the pid record is worthless after
        a host crash, which ends its process too).
        """
        raw = dumps(data).encode()
        fd, self.fd = self.fd, None
        if fd is None or len(raw) > RESERVE_BYTES:
            if fd is not None:
                os.close(fd)
            write_json_atomic(self.path, data)
            return
        try:
            os.pwrite(fd, raw + b" " * (RESERVE_BYTES - len(raw)), 0)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.path + RESERVE_SUFFIX, self.path)

    def close(self) -> None:
        """Let go of the reserved file, left in place (the record will not be written; its directory goes)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def discard(self) -> None:
        """Give the reserved space back (the record will not be written)."""
        self.close()
        try:
            os.unlink(self.path + RESERVE_SUFFIX)
        except FileNotFoundError:
            pass


# -- processes -----------------------------------------------------------------------------------
def proc_stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (state first, then the parent's pid,
    ...; field 22, the start time, is index 19); empty when the process is gone."""
    try:
        raw = read_bytes(f"/proc/{pid}/stat").decode("utf-8", errors="replace")
    except OSError:
        return []
    # The command name may hold spaces and parentheses: the fields start after its last ")".
    return raw[raw.rfind(")") + 2 :].split()


def proc_start_time(pid: int, *, zombie: bool = False) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, None if gone (``zombie``: a zombie is not gone).

    A pid alone can be reused after the process dies; pid plus start time cannot.
    """
    fields = proc_stat(pid)
    if not fields or (fields[0] == "Z" and not zombie):
        return None  # a zombie is as good as gone, unless it is still ours to reap
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


_ts_second = -1
_ts_base = ""


def rfc3339_ns(ns: int) -> str:
    """UTC RFC 3339 with nanoseconds, e.g. ``2026-11-23T18:45:00.123456789Z``."""
    global _ts_second, _ts_base
    secs, frac = divmod(ns, 1_000_000_000)
    if secs != _ts_second:  # one strftime per second of output, not per line
        _ts_second, _ts_base = secs, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    return f"{_ts_base}.{frac:09d}Z"


def last_seq(directory: StrPath) -> int:
    """The highest seq already written, so numbering continues across restarts and rotations."""
    for name in (LOG_NAME, LOG_NAME + ".1"):
        try:
            with open(os.path.join(directory, name), "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - 65536))
                tail = f.read().splitlines()
        except OSError:
            continue
        for raw in reversed(tail):
            try:
                return int(loads(raw.decode("utf-8", errors="replace"))["seq"])
            except (ValueError, KeyError, TypeError):
                continue
    return 0


# -- the log ---------------------------------------------------------------------------------------
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

    def __init__(self, directory: StrPath, max_bytes: int, backups: int, min_free_bytes: int = 0) -> None:
        self.directory = os.fspath(directory)
        self.max_bytes = max(1024, max_bytes)
        self.backups = max(0, backups)
        self.min_free = max(0, min_free_bytes)
        self.seq = last_seq(directory)
        self.path = os.path.join(self.directory, LOG_NAME)
        # Unbuffered: each line is one write(2), visible to followers at once, never half-buffered.
        self.f = open(self.path, "ab", buffering=0)
        self.size = self.f.tell()
        self.dropped = 0  # lines dropped since the last line written
        self._checked = -SPACE_CHECK_SECONDS  # monotonic time of the last look at the free space
        self._budget = 0  # bytes that may be written before looking again
        self._torn = False  # a write stopped mid-line: the next one starts on a fresh line

    def _rotate(self) -> None:
        self.f.close()
        if self.backups == 0:
            if os.path.exists(self.path):
                os.unlink(self.path)
        else:
            for i in range(self.backups - 1, 0, -1):
                src = os.path.join(self.directory, f"{LOG_NAME}.{i}")
                if os.path.exists(src):
                    os.replace(src, os.path.join(self.directory, f"{LOG_NAME}.{i + 1}"))
            os.replace(self.path, os.path.join(self.directory, f"{LOG_NAME}.1"))
        self.f = open(self.path, "ab", buffering=0)
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
        # What json.dumps(rec, ensure_ascii=False) writes, without the json package.
        ts = rfc3339_ns(time.time_ns())
        line = encode_basestring(text)
        return f'{{"seq": {self.seq + 1}, "ts": "{ts}", "stream": "{stream}", "line": {line}}}\n'.encode()

    def _append(self, data: bytes) -> bool:
        """Write one record (rotating first when due); False when the disk had no room for it."""
        if self._torn:
            data = b"\n" + data
        try:
            if self.f.closed:
                # A rotation could not open the new file (no room): open it now, without rotating again.
                self.f = open(self.path, "ab", buffering=0)
                self.size = self.f.tell()
                self._torn = False
            elif self.size and self.size + len(data) > self.max_bytes:
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


# -- the instance ----------------------------------------------------------------------------------
# A discard (DISCARD_SIGNAL) found pending while the signal had to be unblocked for a spawn.
_discard_seen = False


def spawn(spec: dict[str, Any], env: dict[str, str]) -> tuple[int, int, int]:
    """Start the instance in its own process group: (pid, stdout read end, stderr read end).

    Through ``_posixsubprocess.fork_exec``, the C half of ``subprocess.Popen`` (whose module would
    load ``threading``, ``selectors`` and ``signal`` into every shim), called as Popen calls it. On
    Linux it starts the program with ``vfork`` (the child borrows this process's memory until it
    execs) unless a ``preexec_fn`` is given: a fork from a shim that was itself forked from Python
    copies its page tables and takes a copy-on-write fault for every page either side then writes:
    ≈3.3 ms of CPU per start against ≈1.1 ms (bench/README.md). So what the instance needs that
    fork_exec cannot set in the child is set on this process around the call, where fork and vfork
    both pass it on: its signal dispositions and mask (the shim ignores SIGHUP and SIGINT and blocks
    DISCARD_SIGNAL; the instance gets the defaults) and its open-files limit. Only a memory limit (a
    hard RLIMIT_AS the shim must not take on itself) is set in a forked child.

    Raises OSError with the reason when the program cannot be started (no such program, bad cwd, …).
    """
    global _discard_seen
    import resource
    from _posixsubprocess import fork_exec

    argv = [str(a) for a in spec.get("argv") or ()]
    if not argv or not argv[0]:
        raise OSError("no command")
    memory = int(spec.get("rlimit_as") or 0)

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    env_list = []
    for key, value in env.items():
        if "=" in key:
            raise ValueError(f"environment variable name {key!r} contains '='")
        env_list.append(os.fsencode(key) + b"=" + os.fsencode(value))
    program = os.fsencode(argv[0])
    # As os.execvpe looks a name up (and Popen with it), less os.get_exec_path's import of warnings
    # (≈1 ms of every start: a module loaded from its cached bytecode in every shim).
    search = env.get("PATH", os.defpath).split(os.pathsep)
    found = (os.path.join(os.fsencode(d), program) for d in search)
    paths = (program,) if os.path.dirname(program) else tuple(found)
    # Any: typeshed's stub wants a cwd and a preexec_fn; the C function takes None for either, as Popen passes.
    cwd: Any = spec.get("cwd") or None
    preexec: Any = limit_memory if memory else None
    uid, gid = spec.get("uid"), spec.get("gid")
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    report_r, report_w = os.pipe()
    _discard_seen = _discard_seen or _discarded()
    handlers = {sig: _signal.signal(sig, _signal.SIG_DFL) for sig in IGNORED}
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, {DISCARD_SIGNAL})
    try:
        if spec.get("nofile"):
            # The limit runed was started with (the controller raised its own for its pidfds).
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(int(spec["nofile"]), nofile[1]), nofile[1]))
        pid = fork_exec(
            argv, paths, True, (report_w,), cwd, env_list,
            null, -1, -1, out_w, -1, err_w, report_r, report_w,
            True,  # restore_signals: SIGPIPE and SIGXFSZ, which Python ignores, back to their defaults
            False, 0,  # no new session; a process group of its own
            gid, [] if gid is not None else None, uid,  # groups, then the group, then the user (drops the right)
            # The shim runs with runed's private umask; the instance gets the one runed inherited.
            int(spec.get("umask", -1)),
            preexec,
            # vfork where it can: Python 3.11 to 3.13 take the switch; 3.14 dropped it (always on).
            *((True,) if sys.version_info < (3, 14) else ()),
        )  # fmt: skip
    except BaseException:
        for fd in (out_r, err_r, report_r):
            os.close(fd)
        raise
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, nofile)
        _signal.pthread_sigmask(_signal.SIG_BLOCK, {DISCARD_SIGNAL})
        for sig, handler in handlers.items():
            _signal.signal(sig, handler)
        for fd in (null, out_w, err_w, report_w):
            os.close(fd)
    # "<exception name>:<hex errno>:<what>", nothing once the exec succeeded (as Popen reads it).
    failure = b""
    while chunk := os.read(report_r, 4096):
        failure += chunk
    os.close(report_r)
    if failure:
        os.waitpid(pid, 0)
        os.close(out_r)
        os.close(err_r)
        raise OSError(_failure(failure, argv[0], cwd))
    return pid, out_r, err_r


def _failure(report: bytes, program: str, cwd: str | None) -> str:
    """The reason fork_exec's child reported, worded as Popen's exception would be."""
    name, _, rest = report.decode("utf-8", errors="replace").partition(":")
    number, _, what = rest.partition(":")
    try:
        errno = int(number, 16)
    except ValueError:
        return f"{name}: {rest}"[:4000]
    if not errno:
        return f"{name}: {what}"[:4000]
    # "noexec": the child failed before exec, which means in chdir.
    return f"[Errno {errno}] {os.strerror(errno)}: {cwd if what == 'noexec' else program!r}"


def _pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when ``pid`` ends (Linux 5.3+), or None: then poll."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _report(fd: int | None) -> None:
    """Tell the controller this shim's start is over (the pid or exit record is written): one line, its pid.

    A hint that spares the controller polling starting instances; lost (a full pipe, a controller
    gone) it only delays when the controller looks.
    """
    if fd is None:
        return
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError:
        pass
    os.close(fd)


def _discarded() -> bool:
    """Whether a stop told this shim its instance is being deleted (:data:`DISCARD_SIGNAL` is pending)."""
    return _discard_seen or DISCARD_SIGNAL in _signal.sigpending()


def _group_left(pgid: int) -> bool:
    """Whether any process of the group ``pgid`` is left (dead ones not yet reaped count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _claim(directory: str, attempt: str) -> dict[str, Any] | None:
    """Claim ``attempt`` (see :data:`CLAIM_PREFIX`); its launch spec, or None: not this shim's to run.

    None when the controller gave up on the attempt (its fence is there) or started a later one
    (launch.json names another attempt: this shim was forked late, e.g. by a zygote held up).
    """
    me = os.getpid()
    path = os.path.join(directory, claim_name(attempt))
    if not create_exclusive(path, {"attempt": attempt, "shim_pid": me, "shim_start": proc_start_time(me)}):
        return None
    spec: dict[str, Any] = read_json(os.path.join(directory, LAUNCH_NAME))
    if spec.get("attempt") != attempt:
        os.unlink(path)
        return None
    return spec


def run(
    directory: StrPath, env: dict[str, str] | None = None, report: int | None = None, attempt: str | None = None
) -> int:
    """Start and supervise the instance of ``directory``; ``env`` is its environment (default: this process's).

    ``report``: a pipe to write this shim's pid to once the start is over (shims forked by the zygote).
    ``attempt``: the start this shim is for (default: :data:`ATTEMPT_ENV` of this process's
    environment; none: a launch spec without attempts, run unclaimed).
    """
    directory = os.fspath(directory)
    # Kept pending, never delivered (see DISCARD_SIGNAL); the instance gets it unblocked at exec.
    _signal.pthread_sigmask(_signal.SIG_BLOCK, {DISCARD_SIGNAL})
    exit_path, pid_path = os.path.join(directory, EXIT_NAME), os.path.join(directory, PID_NAME)
    if attempt is None:
        attempt = (os.environ if env is None else env).get(ATTEMPT_ENV, "")
    if attempt:
        claimed = _claim(directory, attempt)
        if claimed is None:
            _report(report)
            return 0
        spec = claimed
    else:
        spec = read_json(os.path.join(directory, LAUNCH_NAME))
    for stale in (exit_path, pid_path):
        if os.path.exists(stale):
            os.unlink(stale)
    exit_record, pid_record = Reserved(exit_path), Reserved(pid_path)
    writer = LogWriter(
        directory,
        int(spec.get("max_bytes", 10 << 20)),
        int(spec.get("backups", 3)),
        int(spec.get("min_free_bytes", DEFAULT_MIN_FREE_BYTES)),
    )
    source = os.environ if env is None else env
    env = {k: v for k, v in source.items() if not k.startswith(SHIM_ENV_PREFIX)}
    try:
        pid, out_r, err_r = spawn(spec, env)
    except (OSError, ValueError, TypeError) as e:
        argv0 = (spec.get("argv") or [""])[0]
        writer.write("stderr", f"runed: cannot start {argv0!r}: {e}".encode())
        writer.close()
        pid_record.discard()
        failure = {"code": 127, "signal": None, "ts": time.time(), "error": f"cannot start: {e}"[:1024]}
        exit_record.commit({**failure, "attempt": attempt} if attempt else failure)
        _report(report)
        return 0
    me = os.getpid()
    pid_record.commit(
        {
            "pid": pid,
            "pid_start": proc_start_time(pid),
            "shim_pid": me,
            "shim_start": proc_start_time(me),
            "ts": time.time(),
            **({"attempt": attempt} if attempt else {}),
        },
        sync=False,
    )
    _report(report)
    names = {out_r: "stdout", err_r: "stderr"}
    partial = {out_r: b"", err_r: b""}
    streams = {out_r, err_r}  # still open
    poller = select.poll()
    for fd in streams:
        os.set_blocking(fd, False)
        poller.register(fd, select.POLLIN)
    pidfd = _pidfd(pid)
    if pidfd is not None:
        poller.register(pidfd, select.POLLIN)
    status: int | None = None
    exited_at = heard_at = 0.0

    def take(fd: int, chunk: bytes) -> None:
        lines = (partial[fd] + chunk).split(b"\n")
        partial[fd] = lines.pop()
        # A single line without newline is still capped so memory stays bounded.
        if len(partial[fd]) > READ_SIZE:
            lines.append(partial[fd])
            partial[fd] = b""
        for line in lines:
            writer.write(names[fd], line.rstrip(b"\r"))

    def reap(block: bool) -> None:
        nonlocal status, exited_at
        done, st = os.waitpid(pid, 0 if block else os.WNOHANG)
        if done:
            status, exited_at = st, time.monotonic()

    while streams:
        # Once the child is gone, what it left in the pipes is read to the end (the exit record
        # comes after its last line); but a grandchild that keeps the pipes open must not keep
        # the shim alive forever: quiet for a moment, or a bounded drain, ends it.
        if status is None and pidfd is None:
            reap(block=False)
        timeout: float | None = None if pidfd is not None else POLL_SECONDS
        if status is not None:
            now = time.monotonic()
            timeout = min(DRAIN_QUIET_SECONDS - (now - max(heard_at, exited_at)), DRAIN_MAX_SECONDS - (now - exited_at))
            if timeout <= 0:
                break
        for fd, _ in poller.poll(None if timeout is None else int(timeout * 1000) + 1):
            if fd == pidfd:
                poller.unregister(pidfd)
                os.close(pidfd)
                pidfd = -1  # the end is known; from here on the drain bounds the waits
                reap(block=True)
                continue
            heard_at = time.monotonic()
            try:
                chunk = os.read(fd, READ_SIZE)
            except BlockingIOError:
                continue
            if not chunk:
                poller.unregister(fd)
                streams.discard(fd)
                continue
            take(fd, chunk)
    if status is None:
        reap(block=True)
    if pidfd is not None and pidfd >= 0:
        os.close(pidfd)
    # Children the instance left behind in its group end with it, as in a container ...
    try:
        os.killpg(pid, _signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    # ... and before the exit record, which a restart follows: one still dying (tearing down its
    # memory) may still hold a port. Their end closes the output they inherited; what they write
    # meanwhile is kept; output held only outside the group (a daemon in a session of its own)
    # does not hold the shim once the group is empty. Bounded: one stuck in the kernel does not.
    until = time.monotonic() + GROUP_END_SECONDS
    while streams and _group_left(pid) and (left := until - time.monotonic()) > 0:
        for fd, _ in poller.poll(int(min(left, GROUP_LOOK_SECONDS) * 1000) + 1):
            try:
                chunk = os.read(fd, READ_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                poller.unregister(fd)
                streams.discard(fd)
                continue
            take(fd, chunk)
    for fd, rest in partial.items():
        if rest:
            writer.write(names[fd], rest)
    os.close(out_r)
    os.close(err_r)
    writer.close()
    assert status is not None
    rc = os.waitstatus_to_exitcode(status)
    code, sig = (None, -rc) if rc < 0 else (rc, None)
    ended = {"code": code, "signal": sig, "ts": time.time()}
    if _discarded():
        exit_record.close()  # its directory goes next, with the reserved file in it
    else:
        exit_record.commit({**ended, "attempt": attempt} if attempt else ended)
    return 0


def ignore_outside_signals() -> None:
    """What a shim sets first, however it was started (its own process, or forked from the zygote)."""
    for sig in IGNORED:
        _signal.signal(sig, _signal.SIG_IGN)


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: shim <instance_dir>", file=sys.stderr)
        return 2
    ignore_outside_signals()
    return run(sys.argv[1])


if __name__ == "__main__":
    sys.exit(main())
