"""The emergency ballast: space the data dir holds in reserve so that runed can start on a full disk.

A start writes a little before it can serve anything: SQLite creates and grows the WAL index
(``runed.db-shm``) when the first connection opens the database (SQLite deletes it when the last
one closes), each role writes its readiness marker, the metric files are created. On a filesystem
with no block left all of that fails, and runed would not come up to serve even reads. So while
there is plenty of room the supervisor keeps ``<data_dir>/EMERGENCY_BALLAST`` (a few MB, allocated
for real), a start on a disk that is short of space deletes it first, and the supervisor puts it
back once space has returned. CockroachDB keeps a ballast for the same reason.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

BALLAST_NAME = "EMERGENCY_BALLAST"
BALLAST_BYTES = 4 * 1024 * 1024
# A start with less than this free releases the ballast.
START_NEEDS_BYTES = 1024 * 1024


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer may still use on the filesystem of ``path`` (None if it cannot be told)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def release_if_short(data_dir: Path) -> bool:
    """Delete the ballast when the data dir's filesystem has less than a start needs; True if it did."""
    free = free_bytes(data_dir)
    if free is None or free >= START_NEEDS_BYTES:
        return False
    try:
        (data_dir / BALLAST_NAME).unlink()
    except OSError:
        return False
    return True


def restore(data_dir: Path, keep_free: int) -> bool:
    """Create the ballast when it is missing and ``keep_free`` bytes stay free beside it; True if it did.

    The blocks are allocated (``posix_fallocate``), not a sparse file's promise. A filesystem that
    cannot allocate gets no ballast.
    """
    path = data_dir / BALLAST_NAME
    if path.exists():
        return False
    free = free_bytes(data_dir)
    if free is None or free < keep_free + BALLAST_BYTES:
        return False
    tmp = data_dir / f".{BALLAST_NAME}.{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.posix_fallocate(fd, 0, BALLAST_BYTES)
        finally:
            os.close(fd)
        tmp.replace(path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        return False
    return True
