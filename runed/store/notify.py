"""Cross-process wake-ups: a committed change pings every runed process through unix datagram sockets.

A unix socket address holds at most 107 bytes of path, less than a deep data dir needs; such
addresses go through the notify directory's descriptor (``/proc/self/fd/N/name``), which Linux
resolves like the full path, so the sockets stay in the data dir under its permissions.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from pathlib import Path

# sockaddr_un.sun_path is 108 bytes on Linux, one of them the terminating NUL.
_SUN_PATH_MAX = 108


class Wakeups:
    """What every notifier shares: the event watchers wait on, set and replaced by each wake-up.

    A notifier says how its loop hears other processes (:meth:`_attach`); the waiting is the same."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    def _attach(self) -> asyncio.Event:
        """The current event, reading wake-ups on the running loop from now on."""
        raise NotImplementedError

    def _wake_local(self) -> None:
        ev = self._event
        if ev is not None:
            self._event = asyncio.Event()
            ev.set()

    def _wake_here(self) -> None:
        """Wake this process's watchers, from the loop's thread or any other."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake_local()
        else:
            loop.call_soon_threadsafe(self._wake_local)

    def arm(self) -> asyncio.Event:
        """The event the next wake-up sets. Taken *before* the change log is read and waited on after,
        so a wake-up that comes while the log is read is not lost (it would wait a safety poll)."""
        return self._attach()

    async def wait(self, timeout: float, armed: asyncio.Event | None = None) -> bool:
        """Wait for a wake-up (since ``armed`` was taken, if given) or the timeout; True when woken."""
        ev = armed if armed is not None else self._attach()
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that arrives
        # as the event fires, leaving a cancelled watcher looping forever.
        try:
            async with asyncio.timeout(timeout):
                await ev.wait()
            return True
        except TimeoutError:
            return False


class Notifier(Wakeups):
    """Each process binds one datagram socket in a shared directory; a commit sends one byte to all.

    This is a hint, not the data: watchers always read the change log, so a lost datagram only
    delays a wake-up until the next safety poll.
    """

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.sock"
        self._dirfd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._sock.bind(self._address(self.path.name))
        self._send = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._send.setblocking(False)

    def _address(self, name: str) -> str:
        """The address of socket ``name`` in the notify directory, short enough to bind or send to."""
        full = str(self.directory / name)
        if len(os.fsencode(full)) < _SUN_PATH_MAX:
            return full
        return f"/proc/self/fd/{self._dirfd}/{name}"

    def _attach(self) -> asyncio.Event:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._event is None:
            if self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(self._sock.fileno())
            self._loop = loop
            self._event = asyncio.Event()
            loop.add_reader(self._sock.fileno(), self._on_readable)
        return self._event

    def _on_readable(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while True:
                self._sock.recv(64)
        self._wake_local()

    def notify(self) -> None:
        """Wake local watchers and every other process's watchers."""
        self._wake_here()
        try:
            peers = os.listdir(self.directory)
        except FileNotFoundError:
            return
        for name in peers:
            if not name.endswith(".sock"):
                continue
            if name == self.path.name:
                continue
            target = self._address(name)
            try:
                self._send.sendto(b"!", target)
            except (ConnectionRefusedError, FileNotFoundError):
                # A process that died without cleaning up: remove its socket.
                with contextlib.suppress(OSError):
                    os.unlink(target)
            except (BlockingIOError, OSError):
                # The peer's queue is full: it has a wake-up pending already.
                pass

    def close(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._send.close()
        with contextlib.suppress(OSError):
            self.path.unlink()
        if self._dirfd >= 0:
            os.close(self._dirfd)
            self._dirfd = -1
