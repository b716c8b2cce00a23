"""Readiness of one descriptor, waited for with poll(2).

Why not ``select.select``: select(2) refuses descriptors over 1,023 (``ValueError: filedescriptor
out of range``), and a controller supervising a thousand instances holds a descriptor or two for
each (a shim's pidfd, a keeper's end pipe), so a socket it opens then (a keeper's, a zygote's, a
database connection) is numbered above that.
"""

from __future__ import annotations

import select


def ready(fd: int, timeout: float | None, *, write: bool = False) -> tuple[bool, bool]:
    """(readable, writable) of ``fd`` once either is (hung up and errors count as readable),
    waiting at most ``timeout`` seconds (None: no limit); (False, False) when the time is out.
    Writability is asked for only with ``write``."""
    p = select.poll()
    p.register(fd, select.POLLIN | (select.POLLOUT if write else 0))
    got = p.poll(None if timeout is None else max(0, int(timeout * 1000)))
    if not got:
        return False, False
    events = got[0][1]
    return bool(events & (select.POLLIN | select.POLLHUP | select.POLLERR)), bool(events & select.POLLOUT)
