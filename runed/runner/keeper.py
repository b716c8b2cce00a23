"""The keeper: one native process that supervises many instances: those of one service
(``controller.shim: service``) or all of a controller's (``shared``).

Why: under a shim per instance every instance is two processes, so ending N instances ends 2N of
them, and a delete of a thousand cannot come within twice a bare kill of the same programs however
little each shim does (bench/README.md, "one keeper for many instances"). The keeper
(``rune-shim --keeper``, runed/runner/shim.c) does for every instance of a controller what a shim
does for one, file for file (claim, launch.json, pid.json, log.jsonl, exit.json), so an instance is
its own process only. The trade: a keeper's death ends the supervision of every instance it runs
(each is then ended and restarted by its policy, as under a dead shim), where a shim's ends one; a
keeper per service keeps that within one service, as a deletion or a scale is.

Each keeper's socket names its group (which instances it takes: a service's hash, or ``all``), so
a controller started anew sends a service's starts to the keeper it left. A keeper that supervises
nothing any more is let go of (:meth:`Keepers.let_go_of_emptied`) and leaves.

The keeper outlives runed (its own session), like a shim. It listens on a socket in the
instances' directory; a controller started anew finds it there and asks it again for each running
instance's end. Requests and replies are length-prefixed JSON (as the zygote's); a start's reply and
a watch's carry a pipe's read end, which reaches end of file once the instance's exit record is
written (a discarded one's, being deleted: once its process has ended), or the keeper is gone: the
controller waits on it as on a shim's pidfd. The instance's environment, secrets included, travels
only over the socket.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import secrets
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from runed.core import fdwait
from runed.runner import native, zygote
from runed.runner.base import Handle, LaunchSpec, Observation, Target, helper
from runed.runner.process import (
    SPAWN_TIMEOUT_SECONDS,
    ProcessRunner,
    Signalled,
    alive,
    fence,
    is_keeper,
    record_time,
)
from runed.runner.shim import proc_start_time

log = logging.getLogger("runed.runner")

SOCKET_PREFIX = ".keeper-"
SOCKET_SUFFIX = ".sock"
# The group of the one keeper for all instances (``controller.shim: shared``).
ALL = "all"
# How soon after an instance's end its keeper is asked whether it supervises anything still (and
# its answer looked for again), and the key of that question.
EMPTIED_CHECK_SECONDS = 0.5
EMPTY_KEY = "\0empty"
ERR_NAME = "keeper.err"
# A keeper answers a start once its process runs: a fork, an exec and a few small files.
REPLY_TIMEOUT_SECONDS = 10.0
# Signals asked for in one pass go to a keeper in messages of at most this many instances.
SIGNAL_BATCH = 64


class KeeperError(Exception):
    """A keeper could not be started, reached or understood."""


# A reply and the descriptor that came with it (a start's or a watch's end pipe), owned by the taker.
Answer = tuple[dict[str, Any], int | None]


class Keeper:
    """One connection to one keeper, used from one thread (the controller's loop).

    Requests are pipelined: a start is sent and its reply taken later (:meth:`ask`,
    :meth:`collect`, :attr:`answers`), so a cast of a thousand does not wait a round trip each.
    Replies come in the order of the requests; the fire-and-forget ones have none.
    """

    def __init__(self, sock: socket.socket, path: Path, started: tuple[int, int | None] | None = None) -> None:
        """``started``: the pid and start time of a keeper just started, which is not asked them."""
        self.sock = sock
        self.path = path
        self.group = group_of(path.name)
        self.pid = 0
        self.start: int | None = None
        # Replies by the key they were asked under, until taken; keys whose replies nobody takes.
        self.answers: dict[str, Answer] = {}
        self._awaiting: collections.deque[str] = collections.deque()
        self._unwanted: set[str] = set()
        self._inbox = b""
        self._fds: collections.deque[int] = collections.deque()
        self._calls = 0
        # Why the connection is of no more use (the keeper is gone), once it is.
        self.broken: str | None = None
        # The connection, polled by :meth:`connected` (made once: it is asked once per start).
        self._hangup = select.poll()
        self._hangup.register(sock, select.POLLIN)
        if started is not None:
            self.pid, self.start = started
            return
        hello, _ = self.call({"op": "ping"})
        self.pid = int(hello["pid"])
        self.start = hello.get("start")

    @classmethod
    def connect(cls, path: Path) -> Keeper:
        """Connect to the keeper listening at ``path`` (raises OSError when none does)."""
        with _address(path) as address:
            sock = _connect(address)
        try:
            return cls(sock, path)
        except (KeeperError, ValueError, KeyError, TypeError):
            sock.close()
            raise

    def alive(self) -> bool:
        return self.broken is None and alive(self.pid, self.start)

    def connected(self) -> bool:
        """Whether the keeper still holds its end of the connection (it ends with the keeper): one
        poll(2), where :meth:`alive` reads and parses /proc (a cast of a thousand asks a thousand times)."""
        if self.broken is not None:
            return False
        return not any(ev & (select.POLLHUP | select.POLLERR) for _, ev in self._hangup.poll(0))

    def send(self, request: dict[str, Any]) -> None:
        """Send a request that has no reply."""
        if self.broken is not None:
            raise KeeperError(self.broken)
        view = memoryview(zygote.frame(request, json.dumps))
        try:
            while view:
                try:
                    view = view[self.sock.send(view) :]
                except BlockingIOError:
                    # The keeper is busy starting what it was sent: its replies are taken meanwhile.
                    readable, writable = fdwait.ready(self.sock.fileno(), REPLY_TIMEOUT_SECONDS, write=True)
                    if not readable and not writable:
                        raise TimeoutError("timed out") from None
                    if readable:
                        self.collect()
        except OSError as e:
            self._break(f"keeper (pid {self.pid or '?'}) unreachable: {e}")

    def ask(self, key: str, request: dict[str, Any]) -> None:
        """Send ``request``; its reply goes to :attr:`answers` under ``key`` (see :meth:`collect`)."""
        self.send(request)
        self._awaiting.append(key)

    def quiet(self) -> bool:
        """Whether every request sent has been answered and every reply taken."""
        return not self.answers and not self._awaiting

    def awaiting(self) -> Sequence[str]:
        """The keys of the requests not answered yet, in the order they were asked."""
        return self._awaiting

    def forget(self, key: str) -> None:
        """Nobody takes the reply to ``key``: dropped as it comes (its descriptor closed)."""
        answer = self.answers.pop(key, None)
        if answer is not None:
            _close(answer[1])
        elif key in self._awaiting:
            self._unwanted.add(key)

    def call(self, request: dict[str, Any]) -> Answer:
        """Send ``request`` and wait for its reply (the replies before it are collected meanwhile)."""
        self._calls += 1
        key = f"\0call {self._calls}"
        self.ask(key, request)
        while key not in self.answers:
            self.collect(block=True)
        return self.answers.pop(key)

    def collect(self, *, block: bool = False) -> None:
        """Take in the replies that came (with ``block``: at least one more read, waiting for it)."""
        if self.broken is not None:
            raise KeeperError(self.broken)
        if block and not fdwait.ready(self.sock.fileno(), REPLY_TIMEOUT_SECONDS)[0]:
            self._break(f"keeper (pid {self.pid or '?'}) did not answer within {REPLY_TIMEOUT_SECONDS:g}s")
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.sock, 1 << 16, 8)
            except BlockingIOError:
                return
            except OSError as e:
                self._break(f"keeper (pid {self.pid or '?'}) did not answer: {e}")
            self._fds.extend(fds)
            if not data:
                self._break(f"keeper (pid {self.pid or '?'}) closed the connection")
            self._inbox += data
            self._parse()

    def _parse(self) -> None:
        while len(self._inbox) >= zygote.HEADER:
            size = int.from_bytes(self._inbox[: zygote.HEADER], "big")
            if len(self._inbox) < zygote.HEADER + size:
                return
            body, self._inbox = self._inbox[zygote.HEADER : zygote.HEADER + size], self._inbox[zygote.HEADER + size :]
            try:
                reply = json.loads(body)
            except ValueError:
                reply = None
            if not isinstance(reply, dict) or not self._awaiting:
                self._break(f"keeper (pid {self.pid or '?'}) answered {body[:200]!r}")
            # A reply naming a running instance (a start's, a watch's) came with its end pipe.
            running = "pid_start" in reply and reply.get("pid") and not reply.get("ended")
            fd = self._fds.popleft() if running and self._fds else None
            key = self._awaiting.popleft()
            if key in self._unwanted:
                self._unwanted.discard(key)
                _close(fd)
            else:
                self.answers[key] = (reply, fd)

    def _break(self, why: str) -> NoReturn:
        self.broken = why
        raise KeeperError(why)

    def close(self) -> None:
        for _, fd in self.answers.values():
            _close(fd)
        self.answers.clear()
        while self._fds:
            os.close(self._fds.popleft())
        self.sock.close()


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


@contextlib.contextmanager
def _address(path: Path) -> Iterator[str]:
    """The address of the socket at ``path`` through its directory's descriptor, open meanwhile: a
    socket's address is limited to 108 bytes, a data directory's path is not."""
    dfd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{dfd}/{path.name}"
    finally:
        os.close(dfd)


def _connect(address: str) -> socket.socket:
    """A connection to ``address``, never blocking: waits are bounded (see :meth:`Keeper.send`,
    :meth:`Keeper.collect`)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(address)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def socket_name(group: str) -> str:
    """A new keeper's socket name: its group (which instances it takes) and a token of its own."""
    return f"{SOCKET_PREFIX}{group}.{secrets.token_hex(6)}{SOCKET_SUFFIX}"


def group_of(name: str) -> str:
    """The group of the keeper listening at socket ``name``; a name without one (a keeper started
    before keepers had groups) is the one keeper for all instances."""
    middle = name.removeprefix(SOCKET_PREFIX).removesuffix(SOCKET_SUFFIX)
    return middle.rpartition(".")[0] or ALL


class Keepers:
    """The keepers of one instances' directory: the one of each group new starts go to, and those
    found there."""

    def __init__(self, program: str) -> None:
        self.program = program
        self._by_pid: dict[int, Keeper] = {}
        # The keeper new starts of each group go to.
        self._ours: dict[str, Keeper] = {}
        self._procs: list[subprocess.Popen[bytes]] = []
        self._looked = False
        # Keepers that may supervise nothing now (an instance of theirs ended), by pid.
        self.emptied: set[int] = set()
        # Keepers let go of, by pid, until reaped (those this runner started are its children).
        self._leaving: set[int] = set()

    def ours(self, workdir: Path, group: str) -> Keeper:
        """The keeper new starts of ``group`` go to: this runner's, one of this program found running
        (the directory is looked through once: a keeper started later is this runner's), or a new one."""
        k = self._ours.get(group)
        if k is not None and k.connected():
            return k
        self._ours.pop(group, None)
        if not self._looked:
            self._looked = True
            self.find(workdir)
        want = os.path.realpath(self.program)
        for k in self._by_pid.values():
            with contextlib.suppress(OSError):
                if k.group == group and k.connected() and os.readlink(f"/proc/{k.pid}/exe") == want:
                    self._ours[group] = k
                    return k
        k = self._ours[group] = self._launch(workdir, group)
        return k

    def known(self, pid: int) -> Keeper | None:
        return self._by_pid.get(pid)

    def of(self, pid: int, workdir: Path) -> Keeper | None:
        """The keeper with ``pid`` (looked for in ``workdir`` if not known yet), or None."""
        k = self._by_pid.get(pid)
        if k is None or not k.alive():
            self.find(workdir)
            k = self._by_pid.get(pid)
        return k

    def find(self, workdir: Path) -> None:
        """Connect to every keeper listening in ``workdir``; sockets no keeper listens on go."""
        for k in list(self._by_pid.values()):
            if not k.alive():
                k.close()
                del self._by_pid[k.pid]
        known = {k.path for k in self._by_pid.values()}
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(workdir):
                path = workdir / name
                if not (name.startswith(SOCKET_PREFIX) and name.endswith(SOCKET_SUFFIX)) or path in known:
                    continue
                try:
                    k = Keeper.connect(path)
                except ConnectionRefusedError:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()  # its keeper is gone
                    continue
                except (OSError, KeeperError, ValueError, KeyError, TypeError) as e:
                    log.warning("keeper socket %s: %s", path, e)
                    continue
                self._by_pid[k.pid] = k
                # Its instances may have ended while no controller was connected.
                self.emptied.add(k.pid)

    def _launch(self, workdir: Path, group: str) -> Keeper:
        """A new keeper for ``group``, connected to. Its socket is bound and listening before it
        starts, handed to it: the connection is made at once and the first start sent on it while
        the keeper is still starting (waiting for it to listen took 6-8 ms of the controller's
        loop for each new keeper, a service's first start)."""
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / socket_name(group)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            with _address(path) as address:
                listener.bind(address)
                os.chmod(path, 0o600)  # before listen(): nobody could connect until now
                listener.listen(socket.SOMAXCONN)
                proc = helper(
                    [self.program, "--keeper", path.name, str(listener.fileno())],
                    workdir,
                    ERR_NAME,
                    pass_fds=(listener.fileno(),),
                )
                self._procs.append(proc)
                sock = _connect(address)
        except OSError as e:
            with contextlib.suppress(OSError):
                path.unlink()
            raise KeeperError(f"cannot start a keeper: {e}") from None
        finally:
            listener.close()
        k = Keeper(sock, path, (proc.pid, proc_start_time(proc.pid)))
        self._by_pid[k.pid] = k
        log.info("keeper started (pid %d)", k.pid)
        return k

    def let_go_of_emptied(self) -> bool:
        """Close the connection to each keeper of :attr:`emptied` that supervises nothing now: a
        keeper without instances and clients exits (its socket with it), so a deleted or scaled-down
        service leaves no process behind. Returns whether to look again a little later: a keeper has
        not answered yet, has only instances being deleted or finished, or was let go of and has not
        been reaped yet.

        Asked, not waited for: the question goes now and its answer is taken by a later look, so a
        slow or stopped keeper holds up nothing. A keeper that answers that it has no instance, with
        no request sent after the question, has none this runner started (starts come from this
        thread only, answered in order; one sent later goes to a new keeper). Its instances' end
        pipes are descriptors of their own, not the connection.
        """
        self.reap()
        emptied, self.emptied = self.emptied, set()
        for pid in sorted(emptied):
            k = self._by_pid.get(pid)
            if k is None:
                continue
            try:
                k.collect()
                answer = k.answers.pop(EMPTY_KEY, None)
                if answer is None:
                    if EMPTY_KEY not in k.awaiting():
                        k.ask(EMPTY_KEY, {"op": "ping"})
                    self.emptied.add(pid)
                    continue
            except KeeperError:
                self._drop(k)
                continue
            reply = answer[0]
            if not reply.get("instances") and k.quiet():
                self._drop(k)
            elif not reply.get("live", 1) or not k.quiet():
                # Only instances being deleted or finished: gone soon (or killed after their grace,
                # which needs the connection); or a start sent since. Asked again. Instances that
                # run on mark it again as they end.
                self.emptied.add(pid)
        # A keeper let go of is this process's child until reaped: looked at again until it is.
        return bool(self.emptied or self._leaving)

    def _drop(self, k: Keeper) -> None:
        k.close()
        self._leaving.add(k.pid)
        self._by_pid.pop(k.pid, None)
        if self._ours.get(k.group) is k:
            del self._ours[k.group]

    def reap(self) -> None:
        self._procs = [p for p in self._procs if p.poll() is None]
        self._leaving.intersection_update(p.pid for p in self._procs)

    def close(self) -> None:
        """Let go of every keeper (they run on, with their instances)."""
        for k in self._by_pid.values():
            k.close()
        self._by_pid.clear()
        self._ours.clear()


@dataclasses.dataclass
class Kept(Signalled):
    """A stop of an instance run by a keeper, which signals it."""

    keeper: Keeper
    # Whether its end was late, so that its process's pidfd was waited on too (:meth:`KeeperRunner._late_end`).
    late: bool = False


class KeeperRunner(ProcessRunner):
    """The process runner with a keeper for many instances instead of a shim for each: one per
    service (``per_service``, ``controller.shim: service``), or one for all (``shared``).

    Instances a shim of their own runs (started before, or while no keeper could be) are run as
    :class:`ProcessRunner` runs them.
    """

    def __init__(
        self,
        nofile: int | None = None,
        *,
        spawn_timeout: float = SPAWN_TIMEOUT_SECONDS,
        program: str,
        per_service: bool = False,
    ) -> None:
        super().__init__(nofile, fork=False, spawn_timeout=spawn_timeout)
        self.keepers = Keepers(program)
        self.per_service = per_service
        self._emptied_check: asyncio.TimerHandle | None = None
        # The connections to keepers with starts asked, by descriptor: readable once a keeper has
        # answered (see :meth:`start_reports`).
        self._answering = select.epoll()
        self._answerers: dict[int, Keeper] = {}
        # The end descriptors of the starts' replies, by instance directory, until the controller takes them.
        self._ends: dict[str, int] = {}
        # The keepers of a batch of ends, and whether each is connected (:meth:`_ends_together`).
        self._connected: dict[Keeper, bool] = {}
        # Starts asked of a keeper and not answered yet, by instance directory: (keeper, attempt, since when).
        self._starting: dict[str, tuple[Keeper, str, float]] = {}
        # Signals for keepers to send, by (keeper pid, signal, discard): the instances' directories.
        self._signals: dict[tuple[int, int, bool], list[str]] = {}
        self._signals_due = False
        # Directories sent their SIGTERM by :meth:`signal_now`, with their keeper's pid, until the
        # pass that set up their stops yields (:meth:`_signal` sends them none again).
        self._sent: dict[str, int] = {}

    def start(self, spec: LaunchSpec) -> Handle:
        """Ask the keeper to start the instance; its reply is taken by :meth:`observe` (pipelined)."""
        d, attempt, env = self._prepare(spec)
        try:
            keeper = self.keepers.ours(d.parent, self._group(spec))
            keeper.ask(attempt, {"op": "start", "dir": str(d), "attempt": attempt, "env": env})
            self._listen_to(keeper)
        except KeeperError as e:
            log.warning("%s; starting the instance under a shim of its own", e)
            if not fence(d, attempt):
                return Handle(attempt=attempt)  # the keeper took it after all: its claim tells
            _, attempt, env = self._prepare(spec)
            return self._spawn_shim(d, attempt, env)
        self._drop_start(d)
        self._starting[str(d)] = (keeper, attempt, time.monotonic())
        return Handle(attempt=attempt)

    def _listen_to(self, keeper: Keeper) -> None:
        fd = keeper.sock.fileno()
        if self._answerers.get(fd) is keeper:
            return
        self._answerers[fd] = keeper
        # A descriptor number of a connection closed since is not in the set any more (closing it took it out).
        with contextlib.suppress(FileExistsError):
            self._answering.register(fd, select.EPOLLIN)

    def start_reports(self) -> int | None:
        """Readable once a keeper has answered a start (then :meth:`drain_reports`): the controller
        takes the answer at once, not at its next look at what is starting (a tick of 20 ms, most of
        a scale-1 cast's time under a keeper, where a shim reports its start as it ends)."""
        return self._answering.fileno()

    def drain_reports(self) -> None:
        for fd, _ in self._answering.poll(0):
            keeper = self._answerers.get(fd)
            try:
                if keeper is None:
                    raise KeeperError("not a keeper's")
                keeper.collect()
            except KeeperError:
                # Gone (its starts are seen ended at the next look) or closed: not listened to again.
                self._answerers.pop(fd, None)
                with contextlib.suppress(OSError):
                    self._answering.unregister(fd)

    def _group(self, spec: LaunchSpec) -> str:
        """The keeper group an instance's start goes to: its service's, or the one for all."""
        if not self.per_service:
            return ALL
        return hashlib.sha256(f"{spec.namespace}/{spec.service}".encode()).hexdigest()[:16]

    def observe(self, directory: Path, handle: Handle) -> Observation:
        if handle.pid == 0 and not handle.shim_pid and str(directory) in self._starting:
            got = self._answer(directory, handle)
            if isinstance(got, Observation):
                return got
            handle, started_at = got
            if handle.pid:
                # Its keeper has just said it runs: nothing to read again. An end from now on
                # comes through the start's end pipe (the controller's exit watch).
                self._start_over(directory, handle)
                return Observation("running", handle, started_at=started_at)
        seen = super().observe(directory, handle)
        if seen.state == "exited":
            self._emptied(seen.handle.shim_pid or handle.shim_pid)
        return seen

    def _emptied(self, pid: int) -> None:
        """An instance of the keeper ``pid`` (if it is one this runner knows) ended: whether the
        keeper supervises anything still is asked soon, once for all the ends until then."""
        if self.keepers.known(pid) is None:
            return
        self.keepers.emptied.add(pid)
        if self._emptied_check is None:
            with contextlib.suppress(RuntimeError):  # no loop (a runner used on its own): not asked
                loop = asyncio.get_running_loop()
                self._emptied_check = loop.call_later(EMPTIED_CHECK_SECONDS, self._let_go_of_emptied)

    def _let_go_of_emptied(self) -> None:
        self._emptied_check = None
        if self.keepers.let_go_of_emptied():
            self._emptied_check = asyncio.get_running_loop().call_later(EMPTIED_CHECK_SECONDS, self._let_go_of_emptied)

    def _answer(self, directory: Path, handle: Handle) -> tuple[Handle, float | None] | Observation:
        """The handle of a start asked of a keeper, once it answered, and when its process started
        (or how the start ended)."""
        keeper, attempt, since = self._starting[str(directory)]
        if attempt != handle.attempt:
            return handle, None
        with contextlib.suppress(KeeperError):
            keeper.collect()
        answer = keeper.answers.pop(attempt, None)
        if answer is None:
            if keeper.broken is None and time.monotonic() - since <= self.spawn_timeout:
                return Observation("starting", handle)
            del self._starting[str(directory)]
            keeper.forget(attempt)
            if fence(directory, attempt):
                why = keeper.broken or f"the keeper did not answer within {self.spawn_timeout:g}s"
                self._emptied(keeper.pid)
                return Observation("exited", handle, None, None, f"cannot start: {why}")
            return handle, None  # the keeper claimed it: its claim and records tell
        del self._starting[str(directory)]
        reply, end = answer
        if "error" in reply or reply.get("claimed") is False:
            _close(end)
            why = reply.get("error") or "its start was claimed by another"
            self._emptied(keeper.pid)
            return Observation("exited", handle, None, None, f"keeper could not start the instance: {why}")
        if end is not None:
            _close(self._ends.pop(str(directory), None))
            self._ends[str(directory)] = end
        # A start that failed has its exit record already (pid 0): it is read next.
        got = dataclasses.replace(
            handle,
            pid=int(reply.get("pid") or 0),
            pid_start=reply.get("pid_start"),
            shim_pid=keeper.pid,
            shim_start=keeper.start,
        )
        return got, record_time(reply.get("ts"))

    def _drop_start(self, directory: Path) -> None:
        """A start asked of a keeper that nobody waits for any more (a new one, or abandoned)."""
        entry = self._starting.pop(str(directory), None)
        if entry is not None:
            entry[0].forget(entry[1])
        _close(self._ends.pop(str(directory), None))

    def abandon(self, directory: Path) -> None:
        self._drop_start(directory)
        super().abandon(directory)

    def _keeper(self, directory: Path, handle: Handle) -> Keeper | None:
        """The keeper of ``handle``'s instance, or None (a shim of its own)."""
        if not handle.shim_pid:
            return None
        keeper = self.keepers.known(handle.shim_pid)
        if keeper is not None and keeper.start == handle.shim_start:
            return keeper
        if not is_keeper(handle.shim_pid):
            return None
        return self.keepers.of(handle.shim_pid, directory.parent)

    def exit_fd(self, directory: Path, handle: Handle) -> int | None:
        """The end descriptor of the start's reply, else a new one asked of the instance's keeper;
        a pidfd of the shim for an instance with a shim of its own."""
        fd = self._ends.pop(str(directory), None)
        if fd is not None:
            return fd
        keeper = self._keeper(directory, handle)
        if keeper is None:
            return super().exit_fd(directory, handle)
        try:
            reply, end = keeper.call({"op": "watch", "dir": str(directory), "attempt": handle.attempt})
        except KeeperError as e:
            log.warning("%s", e)
            return None
        if reply.get("gone") or end is None:
            _close(end)
            return None  # ended (or never the keeper's): observed at once
        return end

    def signal_now(self, targets: Sequence[tuple[str, Target]], *, discard: bool) -> None:
        """The SIGTERMs of the targets run by a keeper this runner is connected to, one message per
        keeper, before anything of their stops is set up.

        Why: the stops of a deletion of a thousand took 10-13 ms of the loop's CPU to set up (a
        path, a handle, a taken exit watch, a future and a stop record each), their signals going
        out in batches of :data:`SIGNAL_BATCH` meanwhile; the first batch's dying processes then
        took the cores from the loop, and the last batch left 37-100 ms after the call (traced;
        bench/README.md, "the signals first"). Here a target costs a dictionary look-up: every
        signal is out 12-17 ms after the call.
        """
        dirs: dict[int, list[str]] = {}
        for directory, handle in targets:
            keeper = self.keepers.known(handle.shim_pid) if handle.pid else None
            if keeper is not None and keeper.start == handle.shim_start:
                dirs.setdefault(keeper.pid, []).append(directory)
        # For the stops set up in this pass only (what an earlier call left goes with it).
        self._sent = {}
        for pid, mine in dirs.items():
            self._signals.setdefault((pid, signal.SIGTERM, discard), []).extend(mine)
            self._sent.update(dict.fromkeys(mine, pid))
        with contextlib.suppress(RuntimeError):  # no loop (a runner used on its own): the next call
            asyncio.get_running_loop().call_soon(self._sent.clear)
        self.send_signals()

    def _signal(self, directory: Path, handle: Handle, discard: bool, shim_end: int | None) -> Signalled | None:
        """As :meth:`ProcessRunner._signal`; the keeper's instances are signalled by their keeper,
        the stops of one pass in one message (:meth:`_signal_soon`), none twice (:meth:`signal_now`)."""
        keeper = self._keeper(directory, handle) if handle.pid else None
        sent = self._sent.pop(str(directory), None)
        if keeper is not None and shim_end is None:
            shim_end = self.exit_fd(directory, handle)
        if keeper is None or shim_end is None:
            # A shim of its own, or ended already (no end to wait for): as any process runner does.
            return super()._signal(directory, handle, discard, shim_end)
        if sent != keeper.pid:
            self._signal_soon(keeper, directory, signal.SIGTERM, discard)
        return Kept(directory, handle, shim_end, discard, True, keeper)

    def _kill(self, s: Signalled) -> None:
        """SIGKILL to what outlived the grace period: asked of its keeper, and sent from here too
        while its pid is its own (:func:`_unfinished`): a keeper that cannot (stopped, stuck) does
        not hold the stop up until the wait for an exit record runs out (11 s more)."""
        if not isinstance(s, Kept):
            return super()._kill(s)
        self._signal_soon(s.keeper, s.directory, signal.SIGKILL, s.discard)
        if _unfinished(s):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(s.handle.pid, signal.SIGKILL)

    @contextlib.contextmanager
    def _ends_together(self, stops: list[Signalled]) -> Iterator[None]:
        """Whether each keeper of ``stops`` is still connected is asked once for the batch, not once
        per end (a poll(2) each: 1.5 ms of the serial end of a deletion of a thousand, bench/README.md
        "the tail of a deletion"). The look still comes after the batch's ends were taken, as each
        end's own look did: a keeper that died (its end pipes closing with it) is seen gone."""
        self._connected = {k: k.connected() for k in {s.keeper for s in stops if isinstance(s, Kept)}}
        try:
            yield
        finally:
            self._connected = {}

    def _discarded(self, s: Signalled) -> Observation | None:
        """As :meth:`ProcessRunner._discarded`, but not for an instance whose keeper died (its end
        pipes reached end of file with it) before it killed what ignored SIGTERM: observing a dead
        keeper's instance kills what is left of its group, which would otherwise run on, orphaned,
        its record gone."""
        if not isinstance(s, Kept):
            return super()._discarded(s)
        if not s.discard:
            return None
        connected = self._connected.get(s.keeper)
        if connected is None:
            connected = s.keeper.connected()
        return Observation("exited", s.handle) if connected else None

    def _late_end(self, s: Signalled) -> int | None:
        """A discarded instance's end that is late: its process's pidfd too, so a keeper that cannot
        close the end pipe (stopped, or stuck on a disk that hangs) holds up no deletion. Taken only
        while its pid is its own (:func:`_unfinished`)."""
        if not isinstance(s, Kept) or not s.discard:
            return super()._late_end(s)
        try:
            pidfd = os.pidfd_open(s.handle.pid)
        except OSError:
            return None  # reaped already (or no pidfds): the keeper's word
        if not _unfinished(s):
            os.close(pidfd)
            return None
        s.late = True
        return pidfd

    def _after(self, s: Signalled) -> None:
        """Nothing for a keeper's instance whose end pipe its keeper closed: what was left in its
        group the keeper killed first (after the drain; a discarded one's once its process ended:
        the keeper's ``inst_end_discarded``). What a late end's group left (a keeper that could not
        close the pipe, :meth:`_late_end`) is killed here. Its group id is not another's: a group
        keeps its id while any member lives, and a free one comes back only after the kernel has
        cycled through ``pid_max`` others."""
        if not isinstance(s, Kept):
            super()._after(s)
            return
        if s.discard and s.late:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(s.handle.pid, signal.SIGKILL)
        self._emptied(s.keeper.pid)

    def _signal_soon(self, keeper: Keeper, directory: Path, signum: int, discard: bool) -> None:
        """Have ``keeper`` send ``signum`` to the instance in ``directory`` once the pass yields,
        with every other signal asked for meanwhile: a deletion of a thousand is one message, and
        the keeper (a process that has not reaped the instance knows its pid is its own) needs no
        look at /proc before each kill."""
        dirs = self._signals.setdefault((keeper.pid, signum, discard), [])
        dirs.append(str(directory))
        if len(dirs) >= SIGNAL_BATCH:
            # The keeper starts on these while this pass goes on (both cores at work).
            self.send_signals()
            return
        if self._signals_due:
            return
        self._signals_due = True
        try:
            asyncio.get_running_loop().call_soon(self.send_signals)
        except RuntimeError:  # no loop (a runner used on its own): at once
            self.send_signals()

    def send_signals(self) -> None:
        self._signals_due = False
        batch, self._signals = self._signals, {}
        for (pid, signum, discard), dirs in batch.items():
            keeper = self.keepers.known(pid)
            try:
                if keeper is None:
                    raise KeeperError(f"keeper (pid {pid}) is gone")
                keeper.send({"op": "signal", "dirs": dirs, "signal": signum, "discard": discard})
            except KeeperError as e:
                # Its instances' ends are near (their ends reach end of file with the keeper).
                log.warning("cannot signal %d instances: %s", len(dirs), e)

    def reap(self) -> None:
        super().reap()
        self.keepers.reap()

    def close(self, wait: float = 0.0) -> None:
        super().close(wait)
        if self._emptied_check is not None:
            self._emptied_check.cancel()
            self._emptied_check = None
        for fd in self._ends.values():
            os.close(fd)
        self._ends.clear()
        self._starting.clear()
        self.keepers.close()
        # The set stays (emptied: closing the connections took them out), for a controller that
        # leads again with this runner; the loop's reader of it went with the controller.
        self._answerers.clear()


def _unfinished(s: Kept) -> bool:
    """Whether the keeper has not finished ``s``'s instance (its end pipe is open), so that its pid
    and group are still its own: the keeper has not reaped the process, or has only just now (a kept
    instance's output being drained), and a pid comes back only after the kernel has cycled through
    ``pid_max`` others. What runed signals or waits on itself, not through the keeper, is checked so."""
    return not fdwait.ready(s.end, 0)[0]


def process_runner(nofile: int | None, *, spawn_timeout: float, shim: str) -> ProcessRunner:
    """The process runner ``controller.shim`` asks for: a keeper per service ("service") or for
    all instances ("shared"), a shim per instance when no native shim can be built; else a shim
    per instance."""
    if shim in ("service", "shared"):
        program = native.shim_path()
        if program is not None:
            return KeeperRunner(nofile, spawn_timeout=spawn_timeout, program=program, per_service=shim == "service")
        log.warning("controller.shim is %s, but no native shim could be built: a shim per instance instead", shim)
        shim = "auto"
    return ProcessRunner(nofile, spawn_timeout=spawn_timeout, shim=shim)
