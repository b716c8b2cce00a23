"""The runner interface: what the controller needs to start, observe and stop one instance."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class RunnerError(Exception):
    """An instance cannot be started; ``fatal`` means retrying will not help (e.g. no engine)."""

    def __init__(self, message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.fatal = fatal


def helper(
    argv: list[str],
    workdir: Path,
    err_name: str,
    *,
    stdin: int = subprocess.DEVNULL,
    stdout: int = subprocess.DEVNULL,
    pass_fds: Sequence[int] = (),
) -> subprocess.Popen[bytes]:
    """Start a runner's helper process (the zygote, a keeper) in the instances' directory: without
    runed's environment, in a session of its own (runed's signals and end do not reach it, so the
    instances it supervises outlive runed), its errors appended to ``err_name`` there.
    Raises OSError."""
    with (workdir / err_name).open("ab") as err:
        return subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=stdout,
            stderr=err,
            env={},
            cwd=str(workdir),
            start_new_session=True,
            close_fds=True,
            pass_fds=tuple(pass_fds),
        )


@dataclass
class LaunchSpec:
    """Everything a runner needs to start one instance (env already resolved, in memory only)."""

    instance_id: str
    namespace: str
    name: str
    service: str
    directory: Path  # <data_dir>/instances/<instance_id>
    argv: list[str]
    env: dict[str, str]
    cwd: str
    image: str = ""
    uid: int | None = None
    gid: int | None = None
    rlimit_as: int | None = None
    ports: dict[str, int] = field(default_factory=dict)
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 3
    log_min_free_bytes: int = 32 * 1024 * 1024


@dataclass
class Handle:
    """How to find a started instance again, also after a runed restart (persisted in the record)."""

    pid: int = 0
    pid_start: int | None = None
    shim_pid: int = 0
    # With the pid, what tells the shim from a later process that got its pid (None: not known).
    shim_start: int | None = None
    container_id: str = ""
    # Which start this is (process runner): a start the record does not know of yet is told from it.
    attempt: str = ""


class Target(Protocol):
    """What :meth:`Runner.signal_now` reads of a target to find its process: a :class:`Handle`, or
    the fields of the same names of whatever holds one (a controller's instance)."""

    @property
    def pid(self) -> int: ...

    @property
    def shim_pid(self) -> int: ...

    @property
    def shim_start(self) -> int | None: ...


@dataclass
class Observation:
    """What the runner sees now: still starting, running, ending, or gone (with how it ended).

    ``"exiting"``: the process is gone but its supervisor (the shim) has not finished yet (it is
    still writing the process's last output); how it ended is known only once ``"exited"``.
    """

    state: str  # "starting" | "running" | "exiting" | "exited"
    handle: Handle = field(default_factory=Handle)
    code: int | None = None
    signal: int | None = None
    error: str = ""
    # When the process started (epoch seconds, from its supervisor's pid record), if this
    # observation read it: the time of its Started event.
    started_at: float | None = None


class Runner(Protocol):
    """A runtime (process, container). Implementations never touch the store."""

    name: str

    def unavailable_reason(self) -> str | None:
        """None when the runtime can start instances, else why not (shown to users)."""
        ...

    def start(self, spec: LaunchSpec) -> Handle:
        """Start the instance and return at once; :meth:`observe` tells when it is running."""
        ...

    def observe(self, directory: Path, handle: Handle) -> Observation: ...

    def later_start(self, directory: Path, handle: Handle) -> Handle | None:
        """After a controller restart: a start in ``directory`` later than ``handle``'s, or None.

        The record of a start is saved after the start was asked for: a controller killed in
        between leaves a record that does not know of it, while its process may run (or be about to).
        """
        ...

    def abandon(self, directory: Path) -> None:
        """End whatever a start in ``directory`` runs or may still run: the instance has no record."""
        ...

    def exit_fd(self, directory: Path, handle: Handle) -> int | None:
        """A descriptor that becomes readable once the instance's end is decided, or None (then poll).

        The caller owns it (closes it). Lets the controller wait for exits instead of polling.
        """
        ...

    async def stop(
        self, directory: Path, handle: Handle, grace: float, *, discard: bool = False, shim_end: int | None = None
    ) -> Observation:
        """SIGTERM (or the engine's stop), ``grace`` seconds, then SIGKILL; returns how it ended.

        ``discard``: the instance is deleted once stopped (its directory with it), so nothing it
        leaves behind needs to be durable. ``shim_end``: what :meth:`exit_fd` gave for it (owned by
        the stop from now on), or None.
        """
        ...

    def stop_many(
        self,
        stops: Sequence[tuple[Path, Handle, int | None]],
        grace: float,
        *,
        discard: bool,
        ended: Callable[[int, Observation], None],
    ) -> Coroutine[Any, Any, None]:
        """:meth:`stop` each of ``stops`` (directory, handle, ``shim_end``); ``ended(i, how)`` is
        told of ``stops[i]``'s end as it comes (see :func:`stop_each`)."""
        ...

    def signal_now(self, targets: Sequence[tuple[str, Target]], *, discard: bool) -> None:
        """Send now the first signal of a stop of each of ``targets`` (directory, target) that the
        runtime can signal in bulk, before those stops are set up: :meth:`stop_many` of the same
        targets then sends none of them again. Nothing for a runtime that signals each stop itself."""
        ...

    def send_signals(self) -> None:
        """Send now the signals :meth:`stop` holds to send with others (a keeper's: one message per batch)."""
        ...

    def start_reports(self) -> int | None:
        """A descriptor that becomes readable when starts have news (then :meth:`drain_reports`), or None.

        Lets the controller look at a starting instance when its start is over instead of every tick.
        """
        ...

    def drain_reports(self) -> None:
        """Take in what :meth:`start_reports` signalled (the descriptor is no longer readable after)."""
        ...

    def reap(self) -> None:
        """Collect finished helper processes this runner started (no zombies)."""
        ...

    def close(self) -> None:
        """Let go of what the runner holds (helper processes' descriptors); instances keep running."""
        ...


async def stop_each(
    runner: Runner,
    stops: Sequence[tuple[Path, Handle, int | None]],
    grace: float,
    *,
    discard: bool,
    ended: Callable[[int, Observation], None],
) -> None:
    """:meth:`Runner.stop_many` as a stop of each, side by side: for a runtime whose stops share
    nothing (a container engine's, one request each)."""

    async def one(i: int, directory: Path, handle: Handle, shim_end: int | None) -> None:
        ended(i, await runner.stop(directory, handle, grace, discard=discard, shim_end=shim_end))

    await asyncio.gather(*(one(i, *stop) for i, stop in enumerate(stops)))
