"""Descriptors waited on together: one epoll set, which an event loop watches as one descriptor.

Why: a reader per descriptor in the event loop costs a registration, a callback and a removal per
instance; a deletion of a thousand spent 12-14 ms of its pass only taking those readers over to the
stops, and 40 ms of the stops' first steps before any end could be read (bench/README.md, "ends
in batches"). In one set, adding or taking a descriptor is one ``epoll_ctl`` and many ends are read
in one call.
"""

from __future__ import annotations

import select

# Descriptors taken from the set per epoll_wait (more wait for the next call, at once).
BATCH = 1024


class ReadySet:
    """An epoll set of descriptors, each taken out of it once it is reported readable.

    ``oneshot``: each is reported once and then only disabled in the set, not taken out (no system
    call per descriptor), for a set whose descriptors are closed once reported, or closed with it:
    a deletion's thousand ends were a thousand ``epoll_ctl`` calls while the instances ended.
    """

    def __init__(self, *, oneshot: bool = False) -> None:
        self._set = select.epoll()
        self._oneshot = oneshot
        self._events = select.EPOLLIN | (select.EPOLLONESHOT if oneshot else 0)

    def fileno(self) -> int:
        return self._set.fileno()

    def add(self, fd: int) -> None:
        self._set.register(fd, self._events)

    def remove(self, fd: int) -> None:
        self._set.unregister(fd)

    def take_ready(self) -> list[int]:
        """Every descriptor readable now (or at end of file), each removed from the set."""
        out: list[int] = []
        while True:
            batch = [fd for fd, _ in self._set.poll(0, BATCH)]
            if not self._oneshot:
                for fd in batch:
                    self._set.unregister(fd)
            out += batch
            if len(batch) < BATCH:
                return out

    def close(self) -> None:
        self._set.close()
