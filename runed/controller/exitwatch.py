"""Exit notification: the event loop tells the controller when a running instance's end is decided."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
from collections.abc import Callable

from runed.controller.alarm import Alarm
from runed.controller.instance import Key


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
        # The same descriptors, for :meth:`check` (one poll(2) over all of them).
        self._poll = select.poll()
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
            asyncio.get_running_loop().add_reader(fd, self._fire, key)
        except (RuntimeError, OSError, ValueError):
            os.close(fd)
            return False
        self._fds[key] = fd
        self._keys[fd] = key
        self._poll.register(fd, select.POLLIN)
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
        self._poll.unregister(fd)
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().remove_reader(fd)
        return fd

    def check(self) -> int:
        """Fire every watch whose descriptor is readable now; how many fired.

        The safety net for a wake-up the event loop did not deliver: one system call for all the
        watched instances instead of reading each one's files and ``/proc`` entries.
        """
        ready = [self._keys[fd] for fd, _ in self._poll.poll(0) if fd in self._keys]
        for key in ready:
            self._fire(key)
        return len(ready)

    def _fire(self, key: Key) -> None:
        self.discard(key)
        self.fired = True
        self.alarm.wake()

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
        for fd in self._reports:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().remove_reader(fd)
        self._reports.clear()
