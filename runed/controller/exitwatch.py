"""Exit notification: the event loop tells the controller when a running instance's end is decided.

Every watched descriptor is in one :class:`ReadySet`, whose descriptor is the only one the event
loop watches: adding or taking a watch is one ``epoll_ctl``, and the ends of many instances come in
one callback, not one each.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

from runed.controller.alarm import Alarm
from runed.controller.instance import Key
from runed.core.readyset import ReadySet


class ExitWatch:
    """Descriptors (a shim's pidfd) that become readable once an instance's end is decided.

    A watched instance is not observed every tick: when its descriptor fires the instance is
    marked, the loop is woken and the next pass observes it. Runners that offer no descriptor
    (or none could be opened: the shim already gone, too many open files) are polled as before.
    """

    def __init__(self, alarm: Alarm) -> None:
        self.alarm = alarm
        self._fds: dict[Key, int] = {}
        self._keys: dict[int, Key] = {}
        self._set = ReadySet()
        # Whether the loop watches the set (from the first watch on: made outside any loop).
        self._loop: asyncio.AbstractEventLoop | None = None
        # Something ended since the last pass (finished helper processes are worth reaping).
        self.fired = False
        # Runners' start-report descriptors being watched.
        self._reports: set[int] = set()

    def __contains__(self, key: Key) -> bool:
        return key in self._fds

    def add(self, key: Key, fd: int | None) -> bool:
        """Watch ``fd`` (owned from now on) for ``key``, replacing an earlier one; False when not watched."""
        self.discard(key)
        if fd is None:
            return False
        try:
            if self._loop is None:
                loop = asyncio.get_running_loop()
                loop.add_reader(self._set.fileno(), self.check)
                self._loop = loop
            self._set.add(fd)
        except (RuntimeError, OSError, ValueError):
            os.close(fd)
            return False
        self._fds[key] = fd
        self._keys[fd] = key
        return True

    def discard(self, key: Key) -> None:
        """Stop watching ``key`` (its descriptor is closed; a pending notification is dropped)."""
        fd = self.take(key)
        if fd is not None:
            os.close(fd)

    def take(self, key: Key) -> int | None:
        """Stop watching ``key`` and hand its descriptor over (the caller closes it), or None."""
        fd = self._fds.pop(key, None)
        if fd is None:
            return None
        del self._keys[fd]
        self._set.remove(fd)
        return fd

    def check(self) -> int:
        """Fire every watch whose descriptor is readable now; how many fired.

        What the loop runs when the set is readable, and the safety net for a wake-up it did not
        deliver: one system call for all the watched instances, not a look at each one's files.
        """
        fired = 0
        for fd in self._set.take_ready():
            key = self._keys.pop(fd, None)
            if key is not None:
                del self._fds[key]
                os.close(fd)
                fired += 1
        if fired:
            self.fired = True
            self.alarm.wake()
        return fired

    def reports(self, fd: int | None, drain: Callable[[], None]) -> None:
        """Wake the loop whenever ``fd`` (a runner's start reports, not owned) is readable, after ``drain``."""
        if fd is None or fd in self._reports:
            return

        def fire() -> None:
            drain()
            self.alarm.wake()

        try:
            asyncio.get_running_loop().add_reader(fd, fire)
        except (RuntimeError, OSError, ValueError):
            return
        self._reports.add(fd)

    def close(self) -> None:
        """Stop watching everything (the controller is shutting down; instances keep running)."""
        for key in list(self._fds):
            self.discard(key)
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.remove_reader(self._set.fileno())
            self._loop = None
        for fd in self._reports:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().remove_reader(fd)
        self._reports.clear()
        self._set.close()
