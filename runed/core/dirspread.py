"""Instance directories spread over the file system's block groups (ext2/3/4's ``T`` attribute).

ext4 puts a new file or subdirectory in its parent's block group, and when the file system has no
journal it skips every inode freed in the last 30 s or so (``recently_deleted``), one buffer lookup
each, before it takes a free one. Every instance directory lives under ``<data dir>/instances``, so
after a service of 1,000 instances was deleted (≈8,000 inodes freed in a few groups) each of the
next start's eight creations scanned thousands of them: on the journal-less ext4 of the 2-core
development machine a cast of 1,000 right after a delete took 4.8 to 6.4 s, ≈35 % of all CPU in
ext4's inode search, against 2.1 to 2.2 s with this attribute (bench/README.md, "Where a start's
kernel time went"). Marked ``T`` (top of a directory hierarchy, ``chattr +T``), the directory's
subdirectories are placed by the Orlov allocator, which spreads them over the groups, so an
instance's files never queue behind another's freed inodes.

No library sets inode attributes (the ``chattr`` tool does; a process per data dir for one ioctl
is not worth it). Other file systems refuse the request; nothing else changes there.
"""

from __future__ import annotations

import array
import fcntl
import os
import struct
from pathlib import Path

# _IOR('f', 1, long) and _IOW('f', 2, long), in the generic ioctl encoding (x86, Arm, RISC-V, s390);
# elsewhere the request is refused, as on a file system without the attribute.
_LONG = struct.calcsize("l")
FS_IOC_GETFLAGS = (2 << 30) | (_LONG << 16) | (ord("f") << 8) | 1
FS_IOC_SETFLAGS = (1 << 30) | (_LONG << 16) | (ord("f") << 8) | 2
FS_TOPDIR_FL = 0x00020000


def spread_subdirectories(path: Path) -> bool:
    """Mark the directory ``path`` as the top of a hierarchy; False where its file system cannot."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        flags = array.array("i", [0])  # the kernel reads and writes an int, whatever the request says
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags, True)
        if not flags[0] & FS_TOPDIR_FL:
            flags[0] |= FS_TOPDIR_FL
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, flags, True)
    except OSError:  # not ext2/3/4 (ENOTTY, EOPNOTSUPP), or not this user's directory
        return False
    finally:
        os.close(fd)
    return True
