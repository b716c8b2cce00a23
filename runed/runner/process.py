"""The process runner: each instance is a local process under its own shim, in its own session."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from runed.core import filemodes
from runed.core.readyset import ReadySet
from runed.runner import native
from runed.runner.base import Handle, LaunchSpec, Observation, RunnerError, Target
from runed.runner.forkserver import ForkServer, ForkServerError, answer_key, serving
from runed.runner.shim import (
    ATTEMPT_ENV,
    CLAIM_PREFIX,
    DISCARD_SIGNAL,
    EXIT_NAME,
    LAUNCH_NAME,
    PID_NAME,
    SHIM_ENV_PREFIX,
    claim_name,
    create_exclusive,
    proc_start_time,
    proc_stat,
    read_bytes,
    write_json_atomic,
)
from runed.runner.zygote import NATIVE_GONE, SHIM_ERR

log = logging.getLogger("runed.runner")

SHIM_PATH = str(Path(__file__).with_name("shim.py"))
# The directory holding the ``runed`` package, which the shim imports its module from.
SHIM_ROOT = str(Path(__file__).parents[2])
# Imported, not run by path: the module's cached bytecode is loaded instead of compiling the
# source in every shim (the compiler's leftovers cost ≈1.3 MB of heap per shim).
SHIM_BOOT = f"import sys; sys.path.append({SHIM_ROOT!r}); from runed.runner.shim import main; sys.exit(main())"
# How long a shim may take to report its child's pid before the start counts as failed.
SPAWN_TIMEOUT_SECONDS = 15.0
# A forked shim that has not reported the end of its start is looked at this often all the same.
UNREPORTED_LOOK_SECONDS = 0.5
DRAIN_EVERY_SECONDS = 0.01
# The process name of a keeper (``rune-shim --keeper``, set by shim.c).
KEEPER_NAME = b"rune-keeper"
# How long a shim may take, once its process is gone, to write the rest of the output and the exit record.
EXIT_RECORD_TIMEOUT_SECONDS = 10.0
# A stop whose end has not come this long after its signals is also waited for through another
# descriptor, if its runner offers one (:meth:`ProcessRunner._late_end`).
LATE_END_SECONDS = 0.5


@dataclasses.dataclass
class Signalled:
    """A stop whose first signals went out: what the rest of it needs."""

    directory: Path
    handle: Handle
    # Readable once the instance's end is decided (owned by the stop).
    end: int
    discard: bool
    # Whether the process ran when it was signalled.
    running: bool


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(read_bytes(path))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def record_time(value: object) -> float | None:
    """A record's time (epoch seconds), or None when it holds none."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _launch_age(directory: Path) -> float:
    """Seconds since the start in ``directory`` was asked for (launch.json is written first); inf without one."""
    try:
        return time.time() - (directory / LAUNCH_NAME).stat().st_mtime
    except OSError:
        return float("inf")


def _children(pid: int) -> list[int]:
    """The children of ``pid`` (a stopped process: the list cannot grow meanwhile)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        pass
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and proc_stat(int(entry.name))[1:2] == [str(pid)]
    ]


def is_keeper(pid: int) -> bool:
    """Whether ``pid`` is a keeper (:mod:`runed.runner.keeper`): the shim of many instances, never
    killed for one of them."""
    try:
        return Path(f"/proc/{pid}/comm").read_bytes().rstrip(b"\n") == KEEPER_NAME
    except OSError:
        return False


def kill_shim(pid: int, start: int | None) -> None:
    """Kill a shim and what it started (its instance's group, a child not yet in a group of its own).

    Stopped first, so it can fork or exec nothing more while its children are looked for. Only a
    shim known by pid and start time: never a process that reused its pid, nor a keeper.
    """
    if start is None or not alive(pid, start) or is_keeper(pid):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGSTOP)
        for child in _children(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(child, signal.SIGKILL)
        os.kill(pid, signal.SIGKILL)


def fence(directory: Path, attempt: str) -> bool:
    """Give up on a start before its shim claims it: True when no shim of ``attempt`` will ever run
    (see :data:`runed.runner.shim.CLAIM_PREFIX`); False: a shim claimed it first."""
    try:
        return create_exclusive(
            directory / claim_name(attempt), {"attempt": attempt, "fenced": True, "ts": time.time()}
        )
    except FileNotFoundError:
        return True  # no directory: no shim can claim in it either


def _record(path: Path, attempt: str) -> dict[str, Any] | None:
    """A pid or exit record, unless it is another attempt's (records from before attempts count)."""
    data = _read_json(path)
    if data is not None and attempt and data.get("attempt", attempt) != attempt:
        return None
    return data


def shim_argv(directory: Path, native: str | None = None) -> list[str]:
    """The command line of the shim of the instance in ``directory``: the ``native`` shim's, or Python's.

    ``-I -S``: no site (no site-packages scan, no .pth files), no user or environment settings, no
    script directory on the path; the shim needs only the interpreter's own modules (see its docstring).
    The directory is the last argument: tools recognise a shim by its command line naming it.
    """
    if native:
        return [native, str(directory)]
    return [sys.executable, "-I", "-S", "-c", SHIM_BOOT, str(directory)]


def raise_open_files_limit() -> int | None:
    """Raise this process's soft limit on open files to its hard limit; returns the soft limit it had.

    The controller holds a descriptor per running instance (its shim's pidfd): a thousand instances
    would exhaust the common default of 1024. Instances get the original limit back (their shim
    sets it before exec), as a program may rely on it. None when it could not be read or changed.
    """
    import resource

    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            # An unlimited hard limit is capped where the kernel caps it (nr_open).
            want = hard if hard != resource.RLIM_INFINITY else 1 << 20
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (OSError, ValueError):
        return None
    return soft


def alive(pid: int, start: int | None) -> bool:
    """True when ``pid`` still names the process that was started (pid reuse is ruled out)."""
    if pid <= 0:
        return False
    now = proc_start_time(pid)
    return now is not None and (start is None or now == start)


class ProcessRunner:
    """Starts a shim per instance, detached; the shim starts and watches the instance.

    The shim is the native one (:mod:`runed.runner.native`) unless it cannot be built or ``shim``
    is ``"python"``. The zygote (:mod:`runed.runner.forkserver`) starts native shims and forks
    Python ones; without a zygote, each shim is its own process (:func:`shim_argv`).
    """

    name = "process"

    def __init__(
        self,
        nofile: int | None = None,
        *,
        fork: bool = True,
        spawn_timeout: float = SPAWN_TIMEOUT_SECONDS,
        shim: str = "auto",
    ) -> None:
        # The soft limit on open files instances start with (None: this process's own).
        self.nofile = nofile
        # How long a start may go unclaimed by its shim before it is given up (and fenced).
        self.spawn_timeout = spawn_timeout
        # ``shim`` (controller.shim): the native shim, or the Python one ("python", or no compiler).
        self.native = native.chosen(shim)
        self._finding_native: threading.Thread | None = None
        # Shims are started by a zygote (cheap starts; forked Python shims share its memory); without
        # one, each shim is a process of its own (also the fallback when no zygote can be started).
        self.forks = ForkServer() if fork else None
        # Forked shims whose start is not over yet (no report): spawned when; and those that reported.
        self._unreported: dict[int, float] = {}
        self._reported: set[int] = set()
        self._drained_at = 0.0
        # Instance directories whose shim was asked of the zygote and not answered yet: since when.
        self._requested: dict[str, float] = {}
        # Their shims as the zygote answered, until the start is over.
        self._answered: dict[str, Handle] = {}
        # Shims this process started: polled so they never linger as zombies.
        self._shims: dict[int, subprocess.Popen[bytes]] = {}
        self._spawned_at: dict[int, float] = {}
        # Instances (by shim and process pid: a keeper is the shim of many) whose process is gone
        # and whose exit record is still to come: since when.
        self._exiting_since: dict[tuple[int, int], float] = {}
        # Whether an earlier controller's zygote still serves a directory of instances: (looked when, answer).
        self._serving: dict[Path, tuple[float, bool]] = {}

    def unavailable_reason(self) -> str | None:
        return None

    def start(self, spec: LaunchSpec) -> Handle:
        d, attempt, env = self._prepare(spec)
        if self.forks is not None:
            try:
                self.forks.request(d, env, attempt, self.native)
            except ForkServerError as e:
                log.warning("%s; starting the shim as its own interpreter", e)
            else:
                # The shim's pid comes with the zygote's answer (see :meth:`_forked`).
                self._requested[str(d)] = time.monotonic()
                self._answered.pop(str(d), None)
                return Handle(attempt=attempt)
        return self._spawn_shim(d, attempt, env)

    def _prepare(self, spec: LaunchSpec) -> tuple[Path, str, dict[str, str]]:
        """Write the start's launch.json (naming a new attempt); its directory, attempt and the
        instance's environment (which goes to the shim, never to disk)."""
        d = spec.directory
        d.mkdir(parents=True, exist_ok=True)
        if not spec.argv or not spec.argv[0]:
            raise RunnerError("process runtime needs a command (service.process.command or service.command)")
        for name in (EXIT_NAME, PID_NAME):
            (d / name).unlink(missing_ok=True)
        attempt = secrets.token_hex(8)
        write_json_atomic(
            d / LAUNCH_NAME,
            {
                "attempt": attempt,
                "argv": spec.argv,
                "cwd": spec.cwd,
                "uid": spec.uid,
                "gid": spec.gid,
                "rlimit_as": spec.rlimit_as,
                "nofile": self.nofile,
                "max_bytes": spec.log_max_bytes,
                "backups": spec.log_backups,
                # The shim runs with runed's private umask; the instance gets the one runed inherited.
                "umask": filemodes.inherited_umask(),
                "min_free_bytes": spec.log_min_free_bytes,
            },
        )
        # Earlier attempts' claims and fences go once launch.json names this one: a late shim of
        # theirs that claims anew finds another attempt there and runs nothing.
        for name in os.listdir(d):
            if name.startswith(CLAIM_PREFIX) and name.endswith(".json"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(d / name)
        env = {k: v for k, v in spec.env.items() if not k.startswith(SHIM_ENV_PREFIX)}
        return d, attempt, env

    def _spawn_shim(self, d: Path, attempt: str, env: dict[str, str]) -> Handle:
        """Start the shim of ``attempt`` as a process of its own (no zygote)."""
        shim_env = {**env, ATTEMPT_ENV: attempt}
        with (d / SHIM_ERR).open("ab") as err:
            p = None
            program = self.native
            while p is None:
                try:
                    p = subprocess.Popen(
                        shim_argv(d, program),
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                        env=shim_env,
                        cwd=str(d),
                        start_new_session=True,
                        close_fds=True,
                    )
                except OSError as e:
                    if program is not None and e.errno in NATIVE_GONE:
                        self._native_lost(f"{program}: {e.strerror or e}")
                        # Under the Python shim, also when the native one is found again meanwhile.
                        program = None
                        continue
                    # A zygote that took the request after all must not start it now.
                    fence(d, attempt)
                    raise RunnerError(f"cannot start shim: {e}") from None
        self._shims[p.pid] = p
        self._spawned_at[p.pid] = time.monotonic()
        return Handle(shim_pid=p.pid, shim_start=proc_start_time(p.pid), attempt=attempt)

    def signal_now(self, targets: Sequence[tuple[str, Target]], *, discard: bool) -> None:
        return None  # a shim of its own is signalled through its pidfd, which its stop takes

    def send_signals(self) -> None:
        return None  # a shim of its own is signalled at once

    def reap(self) -> None:
        for pid, p in list(self._shims.items()):
            if p.poll() is not None:
                del self._shims[pid]
                self._spawned_at.pop(pid, None)
        if self.forks is not None:
            self.forks.reap()

    def close(self, wait: float = 0.0) -> None:
        """Let go of the zygote (it ends once its shims have: waited for up to ``wait`` seconds).

        Instances and their shims keep running.
        """
        if self.forks is not None:
            self.forks.close(wait)
            self.forks = None

    def start_reports(self) -> int | None:
        """The pipe forked shims report the end of their start to (readable: call :meth:`drain_reports`)."""
        return None if self.forks is None else self.forks.report_r

    def drain_reports(self) -> None:
        if self.forks is not None:
            for pid in self.forks.drain():
                # Kept also when the zygote's answer naming this pid has not been taken in yet.
                self._unreported.pop(pid, None)
                self._reported.add(pid)

    def _native_lost(self, why: str) -> None:
        """The native shim could not be started (its binary was deleted, say): starts run under the
        Python shim while it is found or built again, in a thread (a build takes a second or two)."""
        if self.native is None:
            return
        log.warning("cannot start the native shim (%s): instances start under the Python shim until it is rebuilt", why)
        self.native = None
        if self._finding_native is not None and self._finding_native.is_alive():
            return

        def find() -> None:
            native.shim_path.cache_clear()
            self.native = native.shim_path()
            if self.native is not None:
                log.warning("native shim back: instances start under %s", self.native)

        self._finding_native = threading.Thread(target=find, name="native-shim", daemon=True)
        self._finding_native.start()

    def _forked(self, directory: Path, handle: Handle) -> tuple[Handle, str]:
        """The handle of a shim asked of the zygote, once it answered; and why it failed ("" if not)."""
        assert self.forks is not None
        self.forks.collect()
        if self.forks.native_failed is not None:
            self._native_lost(self.forks.native_failed)
            self.forks.native_failed = None
        key = str(directory)
        answer = self.forks.forked.pop(answer_key(directory, handle.attempt), None)
        if answer is None:
            return handle, ""
        since = self._requested.pop(key)
        if isinstance(answer, str):
            return handle, answer
        pid, start = answer
        self._spawned_at[pid] = since
        if pid not in self._reported:
            self._unreported[pid] = since
        self._answered[key] = dataclasses.replace(handle, shim_pid=pid, shim_start=start)
        return self._answered[key], ""

    def _start_pending(self, handle: Handle) -> bool:
        """Whether a forked shim's start is surely not over: it has not reported, and was looked at lately.

        Spares reading the instance's files on every pass while a thousand shims start; an
        unreported start is still looked at every :data:`UNREPORTED_LOOK_SECONDS` (a lost report,
        a shim that died before reporting).
        """
        since = self._unreported.get(handle.shim_pid)
        if since is None:
            return False
        now = time.monotonic()
        if now - self._drained_at >= DRAIN_EVERY_SECONDS:
            # The controller's loop drains on its own when the pipe is readable; this covers a
            # runner used without it, at most once per pass rather than once per instance.
            self._drained_at = now
            self.drain_reports()
        if handle.shim_pid in self._reported:
            return False
        if now - since < UNREPORTED_LOOK_SECONDS:
            return True
        self._unreported[handle.shim_pid] = now
        return False

    def _start_over(self, directory: Path, handle: Handle) -> None:
        self._drop_request(directory, handle)
        self._answered.pop(str(directory), None)
        self._unreported.pop(handle.shim_pid, None)
        self._reported.discard(handle.shim_pid)
        if handle.shim_pid not in self._shims:
            self._spawned_at.pop(handle.shim_pid, None)  # a forked shim: nobody reaps it here

    def observe(self, directory: Path, handle: Handle) -> Observation:
        """How the instance is doing; an end is decided only once its shim has finished.

        The shim writes the instance's last output and then its exit record: a process that is
        gone while the shim still runs is ``exiting``, not ended. A shim that is gone without an
        exit record died (e.g. ``kill -9``): a process it left behind has lost its stdout and
        stderr and nobody would record its end, so its group is killed here and the end says so.
        """
        if handle.pid == 0 and not handle.shim_pid and str(directory) in self._requested:
            handle, why = self._forked(directory, handle)
            if why:
                if handle.attempt:
                    fence(directory, handle.attempt)  # not forked, and never to be
                return Observation("exited", handle, None, None, f"cannot start shim: {why}")
        if handle.pid == 0 and not handle.shim_pid:
            # The caller keeps the handle start() returned until the instance runs: the shim the
            # zygote answered with is remembered here meanwhile.
            handle = self._answered.get(str(directory), handle)
        if handle.pid == 0 and not handle.shim_pid:
            found = self._unanswered(directory, handle)
            if isinstance(found, Observation):
                return found
            handle = found
        if handle.pid == 0 and self._start_pending(handle):
            return Observation("starting", handle)
        ex = _record(directory / EXIT_NAME, handle.attempt)
        started_at = None
        if handle.pid == 0:
            info = _record(directory / PID_NAME, handle.attempt)
            if info is not None:
                handle = dataclasses.replace(
                    handle,
                    pid=int(info["pid"]),
                    pid_start=info.get("pid_start"),
                    shim_pid=int(info.get("shim_pid") or handle.shim_pid),
                    shim_start=info.get("shim_start", handle.shim_start),
                )
                started_at = record_time(info.get("ts"))
        if ex is not None:
            self._start_over(directory, handle)
            return dataclasses.replace(self._ended(handle, ex), started_at=started_at)
        if handle.pid:
            self._start_over(directory, handle)
            running = alive(handle.pid, handle.pid_start)
            if not handle.shim_pid:
                # No shim known (a record from before shims were recorded): the process decides.
                return Observation("running", handle) if running else self._vanished(directory, handle)
            if self._shim_alive(directory, handle):
                return Observation("running", handle, started_at=started_at) if running else self._exiting(handle)
            # The shim is gone: it may have written its exit record just before it ended.
            ex = _record(directory / EXIT_NAME, handle.attempt)
            if ex is not None:
                return self._ended(handle, ex)
            self._exiting_since.pop((handle.shim_pid, handle.pid), None)
            # What is left of the group goes, also when its leader is gone (a keeper's instances
            # die with it, what they started does not): a group with members keeps its id unused.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(handle.pid, signal.SIGKILL)
            if running:
                why = f"shim died (pid {handle.shim_pid}) while its process ran; the orphaned process group was killed"
            else:
                why = f"shim died (pid {handle.shim_pid}) without recording how its process ended"
            return Observation("exited", handle, None, None, why)
        # No pid yet: the shim is still starting, unless it died or took too long.
        if handle.attempt and not self._shim_alive(directory, handle):
            # The answer may name a shim that found the start claimed by another: a request that
            # seemed to fail, sent again, can be forked twice. The claim names the one that runs it.
            claim = _read_json(directory / claim_name(handle.attempt)) or {}
            claimer = int(claim.get("shim_pid") or 0)
            if claimer and claimer != handle.shim_pid:
                handle = dataclasses.replace(handle, shim_pid=claimer, shim_start=claim.get("shim_start"))
        if not self._shim_alive(directory, handle):
            self._start_over(directory, handle)
            ex = _record(directory / EXIT_NAME, handle.attempt)
            if ex is not None:
                return self._ended(handle, ex)
            try:
                err = (directory / SHIM_ERR).read_text(errors="replace")[-500:]
            except FileNotFoundError:
                err = ""  # it failed before it could say why (or said nothing)
            return Observation("exited", handle, None, None, f"shim failed to start the instance {err.strip()}")
        # Timed from the request here, else (a shim a controller before this one started) from launch.json.
        started = self._spawned_at.get(handle.shim_pid)
        age = time.monotonic() - started if started is not None else _launch_age(directory)
        if age > self.spawn_timeout:
            self._start_over(directory, handle)
            self._give_up(directory, handle)
            return Observation("exited", handle, None, None, "instance did not start in time")
        return Observation("starting", handle)

    def _unanswered(self, directory: Path, handle: Handle) -> Handle | Observation:
        """A start whose shim is not known here: the zygote has not answered yet, or answered a
        controller before this one (killed after asking). Its claim names the shim; without one the
        start is still to come, until ``spawn_timeout`` after it was asked for (or, asked by an
        earlier controller, until no zygote of it takes requests): then it is fenced, so a shim
        forked later (a zygote held up) runs nothing, and it counts as failed."""
        key = str(directory)
        if handle.attempt:
            claim = _read_json(directory / claim_name(handle.attempt))
            if claim is not None:
                # Its shim is known from here on (the zygote's answer, if it comes, says the same).
                if claim.get("fenced"):
                    self._drop_request(directory, handle)
                    return Observation("exited", handle, None, None, "its start was given up before it ran")
                return dataclasses.replace(
                    handle, shim_pid=int(claim.get("shim_pid") or 0), shim_start=claim.get("shim_start")
                )
        elif key not in self._requested or (directory / PID_NAME).exists():
            return handle  # a start from before attempts: its pid record and its shim tell
        since = self._requested.get(key)
        age = time.monotonic() - since if since is not None else _launch_age(directory)
        if age <= self.spawn_timeout and (since is not None or self._earlier_zygote_serves(directory.parent)):
            return Observation("starting", handle)
        if handle.attempt and not fence(directory, handle.attempt):
            return self._unanswered(directory, handle)  # claimed meanwhile: its shim decides
        self._drop_request(directory, handle)
        return Observation("exited", handle, None, None, "instance did not start in time")

    def _earlier_zygote_serves(self, workdir: Path) -> bool:
        """Whether a start an earlier controller asked for may still be forked: a zygote other than
        this runner's still takes requests for ``workdir``. Looked up at most once a second (a scan
        of /proc); without one, the start is given up now, not after ``spawn_timeout``."""
        now = time.monotonic()
        known = self._serving.get(workdir)
        if known is None or now - known[0] > 1.0:
            own = self.forks.proc.pid if self.forks is not None and self.forks.proc is not None else None
            known = self._serving[workdir] = (now, serving(workdir, exclude=own))
        return known[1]

    def _drop_request(self, directory: Path, handle: Handle) -> None:
        """The start in ``directory`` is over: a zygote's answer still to come is not waited for."""
        if self._requested.pop(str(directory), None) is not None and self.forks is not None:
            self.forks.forget(answer_key(directory, handle.attempt))

    def _give_up(self, directory: Path, handle: Handle) -> None:
        """End a start that took too long: fence it, or kill the shim that claimed it (and what it started)."""
        shims = {handle.shim_pid: handle.shim_start} if handle.shim_pid else {}
        if handle.attempt and not fence(directory, handle.attempt):
            claim = _read_json(directory / claim_name(handle.attempt)) or {}
            if claim.get("shim_pid") and not claim.get("fenced"):
                shims[int(claim["shim_pid"])] = claim.get("shim_start")
        for pid, start in shims.items():
            kill_shim(pid, start)

    def later_start(self, directory: Path, handle: Handle) -> Handle | None:
        launch = _read_json(directory / LAUNCH_NAME)
        attempt = str((launch or {}).get("attempt") or "")
        if not attempt or attempt == handle.attempt:
            return None
        claim = _read_json(directory / claim_name(attempt))
        if claim is not None and claim.get("fenced"):
            return None  # given up on before any shim ran it
        return Handle(attempt=attempt)

    def abandon(self, directory: Path) -> None:
        launch = _read_json(directory / LAUNCH_NAME) or {}
        handle = Handle(attempt=str(launch.get("attempt") or ""))
        info = _read_json(directory / PID_NAME)
        if info is not None:
            handle = dataclasses.replace(
                handle,
                pid=int(info.get("pid") or 0),
                pid_start=info.get("pid_start"),
                shim_pid=int(info.get("shim_pid") or 0),
                shim_start=info.get("shim_start"),
            )
        self._give_up(directory, handle)
        if handle.pid and handle.pid_start is not None and alive(handle.pid, handle.pid_start):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(handle.pid, signal.SIGKILL)

    def exit_fd(self, directory: Path, handle: Handle) -> int | None:
        """A pidfd of the shim: it becomes readable when the shim ends, i.e. once the exit is recorded.

        None when the shim is already gone (observe at once) or pidfds are not available (poll).
        """
        if not handle.shim_pid or not hasattr(os, "pidfd_open"):
            return None
        try:
            fd = os.pidfd_open(handle.shim_pid)
        except OSError:
            return None
        # Checked after opening: the descriptor names this shim, not a process that reused its pid.
        if not self._shim_alive(directory, handle):
            os.close(fd)
            return None
        return fd

    def _ended(self, handle: Handle, ex: dict[str, Any]) -> Observation:
        self._exiting_since.pop((handle.shim_pid, handle.pid), None)
        return Observation("exited", handle, ex.get("code"), ex.get("signal"), str(ex.get("error") or ""))

    def _vanished(self, directory: Path, handle: Handle) -> Observation:
        ex = _read_json(directory / EXIT_NAME)
        if ex is not None:
            return self._ended(handle, ex)
        return Observation("exited", handle, None, None, "process vanished without an exit record")

    def _exiting(self, handle: Handle) -> Observation:
        """The process is gone, its shim still writes; a shim that never finishes is ended after a while."""
        since = self._exiting_since.setdefault((handle.shim_pid, handle.pid), time.monotonic())
        if time.monotonic() - since <= EXIT_RECORD_TIMEOUT_SECONDS:
            return Observation("exiting", handle)
        self._exiting_since.pop((handle.shim_pid, handle.pid), None)
        if is_keeper(handle.shim_pid):
            why = f"keeper (pid {handle.shim_pid}) did not record the exit within {EXIT_RECORD_TIMEOUT_SECONDS:g}s"
            return Observation("exited", handle, None, None, why)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(handle.shim_pid, signal.SIGKILL)
        why = f"shim (pid {handle.shim_pid}) did not record the exit within {EXIT_RECORD_TIMEOUT_SECONDS:g}s; killed"
        return Observation("exited", handle, None, None, why)

    def _shim_alive(self, directory: Path, handle: Handle) -> bool:
        """Whether the shim of ``handle`` still runs (never mistaking a process that reused its pid)."""
        own = self._shims.get(handle.shim_pid)
        if own is not None:
            return own.poll() is None  # our child: poll() also reaps it
        if handle.shim_start is not None:
            return alive(handle.shim_pid, handle.shim_start)
        # Adopted from a record without the shim's start time: its command line names the directory.
        if not alive(handle.shim_pid, None):
            return False
        try:
            argv = Path(f"/proc/{handle.shim_pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return str(directory).encode() in argv

    def stop(
        self, directory: Path, handle: Handle, grace: float, *, discard: bool = False, shim_end: int | None = None
    ) -> Coroutine[Any, Any, Observation]:
        """Stop the instance (see :meth:`Runner.stop`); the signals go out now when it runs under a
        known shim, and the coroutine returned waits for its end.

        Now, not when the coroutine first runs: a deletion's pass signals all of its instances
        before it writes their records, and a thousand stops do not each wait for their turn in the
        loop to send two signals. ``shim_end``: the shim's pidfd, already known to name it (the
        controller's exit watch hands it over; owned from now on), which spares opening and
        checking a new one.
        """
        sent = self._signal(directory, handle, discard, shim_end)
        if sent is None:
            return self._stop(directory, handle, grace, discard=discard)
        return self._rest(sent, grace)

    def stop_many(
        self,
        stops: Sequence[tuple[Path, Handle, int | None]],
        grace: float,
        *,
        discard: bool,
        ended: Callable[[int, Observation], None],
    ) -> Coroutine[Any, Any, None]:
        """:meth:`stop` each of ``stops`` (directory, handle, ``shim_end``), their signals now, and
        wait for their ends together: ``ended(i, how)`` is told of ``stops[i]``'s as it comes.

        Together: one epoll set for every end, read a batch at a time, and no task for a stop that
        ends within its grace period (a deletion's do). A stop of its own (a task, a reader and a
        timer in the event loop each) cost 40 µs per instance before its end could come: a
        deletion of a thousand ran 40 ms of first steps after its pass (bench/README.md, "ends in
        batches").
        """
        sent: list[tuple[int, Signalled]] = []
        unsent: list[tuple[int, Coroutine[Any, Any, Observation]]] = []
        for i, (directory, handle, shim_end) in enumerate(stops):
            s = self._signal(directory, handle, discard, shim_end)
            if s is None:
                unsent.append((i, self._stop(directory, handle, grace, discard=discard)))
            else:
                sent.append((i, s))
        return self._stopped_together(sent, unsent, grace, ended)

    async def _stopped_together(
        self,
        sent: list[tuple[int, Signalled]],
        unsent: list[tuple[int, Coroutine[Any, Any, Observation]]],
        grace: float,
        ended: Callable[[int, Observation], None],
    ) -> None:
        """The rest of :meth:`stop_many`: the ends of ``sent`` together, every other stop on its own."""
        loop = asyncio.get_running_loop()

        async def told(i: int, stop: Coroutine[Any, Any, Observation]) -> None:
            ended(i, await stop)

        rests = [loop.create_task(told(i, stop)) for i, stop in unsent]
        by_end = {s.end: (i, s) for i, s in sent}

        def came(fds: list[int]) -> None:
            batch = [by_end.pop(fd) for fd in fds]
            with self._ends_together([s for _, s in batch]):
                for i, s in batch:
                    obs = self._over(s)
                    if obs is None:
                        rests.append(loop.create_task(told(i, self._rest(s, grace))))
                    else:
                        ended(i, obs)

        def late(fds: list[int]) -> dict[int, int]:
            return {fd: other for fd in fds if (other := self._late_end(by_end[fd][1])) is not None}

        await readable_together(list(by_end), max(0.0, grace), came, late=(LATE_END_SECONDS, late))
        # What outlived its grace period: killed, and waited for on its own.
        rests.extend(loop.create_task(told(i, self._rest(s, 0.0))) for i, s in by_end.values())
        await asyncio.gather(*rests)

    def _signal(self, directory: Path, handle: Handle, discard: bool, shim_end: int | None) -> Signalled | None:
        """A stop's first signals, sent now to an instance under a known shim; None (``shim_end``
        closed) when it is not: that stop looks before it signals (:meth:`_stop`)."""
        if handle.pid and shim_end is None:
            shim_end = self.exit_fd(directory, handle)
        if not handle.pid or shim_end is None:
            if shim_end is not None:
                os.close(shim_end)
            return None
        # Pid reuse is ruled out before signalling a group (the shim may have reaped it already).
        running = alive(handle.pid, handle.pid_start)
        if discard:
            # Its exit record is not written (see ``shim.DISCARD_SIGNAL``); through the pidfd:
            # never to a process that reused the shim's pid.
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(shim_end, DISCARD_SIGNAL)
        if running:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(handle.pid, signal.SIGTERM)
        return Signalled(directory, handle, shim_end, discard, running)

    def _kill(self, s: Signalled) -> None:
        """SIGKILL to what outlived the grace period."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(s.handle.pid, signal.SIGKILL)

    def _ends_together(self, stops: list[Signalled]) -> contextlib.AbstractContextManager[None]:
        """Around the finishing of a batch of ends (:meth:`_over` of each of ``stops``): what a
        runner looks at once for all of them. Nothing here."""
        return contextlib.nullcontext()

    def _over(self, s: Signalled) -> Observation | None:
        """Once ``s.end`` is readable: the stop over (``s.end`` closed) with how the instance
        ended, if that needs no look (:meth:`_discarded`), else None (the stop goes on)."""
        obs = self._discarded(s)
        if obs is not None:
            os.close(s.end)
            self._after(s)
        return obs

    def _discarded(self, s: Signalled) -> Observation | None:
        """How an instance whose end came ended, if that needs no look: a discarded instance's
        record and directory go next, unread."""
        if not s.discard:
            return None
        self._start_over(s.directory, s.handle)
        self._exiting_since.pop((s.handle.shim_pid, s.handle.pid), None)
        return Observation("exited", s.handle)

    def _after(self, s: Signalled) -> None:
        """What a stop does once over: stragglers in the group (children that ignored SIGTERM) go
        too, and the shim, this process's child, is reaped."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(s.handle.pid, signal.SIGKILL)
        own = self._shims.get(s.handle.shim_pid)
        if own is not None and own.poll() is not None:
            del self._shims[s.handle.shim_pid]
            self._spawned_at.pop(s.handle.shim_pid, None)

    def _late_end(self, s: Signalled) -> int | None:
        """Another descriptor that says ``s``'s end, taken once it is late (:data:`LATE_END_SECONDS`),
        or None; owned by the caller. None here: a shim's pidfd is the end itself."""
        return None

    async def _end(self, s: Signalled, timeout: float) -> bool:
        """Whether ``s``'s end came within ``timeout`` seconds: its ``end``, or once late, the
        descriptor its runner offers beside it (:meth:`_late_end`)."""
        if timeout <= LATE_END_SECONDS:
            return await readable(s.end, timeout)
        if await readable(s.end, LATE_END_SECONDS):
            return True
        other = self._late_end(s)
        if other is None:
            return await readable(s.end, timeout - LATE_END_SECONDS)
        try:
            return await readable(s.end, timeout - LATE_END_SECONDS, other)
        finally:
            os.close(other)

    async def _rest(self, s: Signalled, grace: float) -> Observation:
        """The rest of a stop whose signals went out (:meth:`_signal`): grace, SIGKILL, the end."""
        try:
            ended = await self._end(s, grace) if s.running and grace > 0 else False
            if not ended:
                if s.running:
                    self._kill(s)
                # How it ended is known once the shim has written its last output and the exit record.
                ended = await self._end(s, EXIT_RECORD_TIMEOUT_SECONDS + 1.0)
            obs = self._discarded(s) if ended else None
            if obs is None:
                obs = self.observe(s.directory, s.handle)
                deadline = time.monotonic() + EXIT_RECORD_TIMEOUT_SECONDS + 1.0
                while obs.state != "exited" and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                    obs = self.observe(s.directory, obs.handle)
        finally:
            os.close(s.end)
        self._after(s)
        return obs

    async def _stop(self, directory: Path, handle: Handle, grace: float, *, discard: bool = False) -> Observation:
        # Waiting on the shim's pidfd instead of polling: a thousand stops in flight would
        # otherwise look at /proc and the instance dirs fifty thousand times a second.
        shim_end = self.exit_fd(directory, handle) if handle.pid else None
        if shim_end is not None:
            # A running instance whose shim runs (the pidfd was opened after checking): nothing
            # more to read before signalling it (a thousand stops of a delete read less).
            obs = Observation("running" if alive(handle.pid, handle.pid_start) else "exiting", handle)
        else:
            obs = self.observe(directory, handle)
            if obs.state == "starting" and not obs.handle.shim_pid and obs.handle.attempt:
                # Not forked yet (or forked, not claimed yet): stopped before it runs anything,
                # rather than waited for (a zygote held up would hold the stop up as long).
                if fence(directory, obs.handle.attempt):
                    self._drop_request(directory, obs.handle)
                    return Observation("exited", obs.handle, None, None, "stopped before it started")
                obs = self.observe(directory, obs.handle)
            deadline = time.monotonic() + self.spawn_timeout
            while obs.state == "starting" and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
                obs = self.observe(directory, obs.handle)
            if obs.state not in ("running", "exiting"):
                return obs
            shim_end = self.exit_fd(directory, obs.handle)
        pgid = obs.handle.pid
        if discard and shim_end is not None:
            # Its exit record is not written (see ``shim.DISCARD_SIGNAL``); through the pidfd:
            # never to a process that reused the shim's pid.
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(shim_end, DISCARD_SIGNAL)
        try:
            if obs.state == "running":
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGTERM)
                if shim_end is not None:
                    if not await readable(shim_end, max(0.0, grace)):
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.killpg(pgid, signal.SIGKILL)
                else:
                    deadline = time.monotonic() + max(0.0, grace)
                    while time.monotonic() < deadline:
                        obs = self.observe(directory, obs.handle)
                        if obs.state != "running":
                            break
                        await asyncio.sleep(0.02)
                    else:
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.killpg(pgid, signal.SIGKILL)
            # How it ended is known once the shim has written its last output and the exit record.
            if shim_end is not None:
                await readable(shim_end, EXIT_RECORD_TIMEOUT_SECONDS + 1.0)
            obs = self.observe(directory, obs.handle)
            deadline = time.monotonic() + EXIT_RECORD_TIMEOUT_SECONDS + 1.0
            while obs.state != "exited" and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
                obs = self.observe(directory, obs.handle)
        finally:
            if shim_end is not None:
                os.close(shim_end)
        # Stragglers in the group (children that ignored SIGTERM) go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        # Only this stop's shim: reaping them all here would cost N polls per stop, N² per delete.
        own = self._shims.get(obs.handle.shim_pid)
        if own is not None and own.poll() is not None:
            del self._shims[obs.handle.shim_pid]
            self._spawned_at.pop(obs.handle.shim_pid, None)
        return obs


async def readable_together(
    fds: list[int],
    timeout: float,
    came: Callable[[list[int]], None],
    *,
    late: tuple[float, Callable[[list[int]], dict[int, int]]] | None = None,
) -> list[int]:
    """Wait until each of ``fds`` is readable (see :func:`readable`), at most ``timeout`` seconds:
    ``came`` is given those that became readable, a batch at a time; returns those that did not.

    ``late``: (seconds, stand-ins): after that long, ``stand-ins`` is asked for descriptors that
    say the end of those still waited for (fd -> its stand-in, owned here from then on); a stand-in
    readable counts as its fd.

    One :class:`ReadySet`, which the event loop watches, for all of them: one reader and one
    timer instead of one each, and a batch of ends in one wake-up."""
    left = dict.fromkeys(fds)
    if not left:
        return []
    loop = asyncio.get_running_loop()
    every = loop.create_future()
    # Each is reported once: one that came is closed by its stop (or waited on by itself: no
    # longer this set's), the rest with the set.
    ready = ReadySet(oneshot=True)
    for fd in left:
        ready.add(fd)
    stand_in: dict[int, int] = {}

    def drain() -> None:
        batch = []
        for fd in ready.take_ready():
            fd = stand_in.get(fd, fd)
            if fd in left:
                del left[fd]
                batch.append(fd)
        if batch:
            came(batch)
        if not left and not every.done():
            every.set_result(None)

    def lateness() -> None:
        assert late is not None
        for fd, other in late[1](list(left)).items():
            stand_in[other] = fd
            ready.add(other)
        drain()

    loop.add_reader(ready.fileno(), drain)
    timer = loop.call_later(late[0], lateness) if late is not None else None
    try:
        drain()  # those readable already
        async with asyncio.timeout(timeout):
            await every
    except TimeoutError:
        pass
    finally:
        if timer is not None:
            timer.cancel()
        loop.remove_reader(ready.fileno())
        ready.close()
        for other in stand_in:
            os.close(other)
    return list(left)


async def readable(fd: int, timeout: float, *more: int) -> bool:
    """Wait until ``fd`` (a shim's pidfd, a keeper's end pipe) or one of ``more`` is readable, i.e.
    the end is recorded; False after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    ended = loop.create_future()

    def fire() -> None:
        if not ended.done():
            ended.set_result(None)

    fds = (fd, *more)
    for each in fds:
        loop.add_reader(each, fire)
    try:
        async with asyncio.timeout(timeout):
            await ended
        return True
    except TimeoutError:
        return False
    finally:
        for each in fds:
            loop.remove_reader(each)
