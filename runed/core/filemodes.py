"""Private files: what runed keeps in its data dir is its own (directories 0700, files 0600).

The data dir holds the store (names, audit records), keys and instance output. :func:`make_private`
sets the umask ``0o077`` at start, so whatever runed and the processes it starts (roles, shims)
create is private, and tightens a data dir that was created looser (by an operator's ``mkdir`` or an
older runed). Instances are not runed's files: their shim starts them with the umask runed itself
inherited (:func:`inherited_umask`), as a service manager would.

An instance that runs as another user must pass through runed's directories to its working dir and
mounts: :func:`allow_search` gives others search (``x``) on that chain, never read or write, so they
can list nothing and open none of runed's files (all 0600). A data dir in that state stays so.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PRIVATE_UMASK = 0o077
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
# Set by the first runed process of a tree (the supervisor, or a role run alone): the umask it was
# started with, which its roles inherit along with the private one.
INHERITED_UMASK_ENV = "RUNED_INHERITED_UMASK"


def make_private(data_dir: Path) -> None:
    """Umask 0o077 for this process and its children; ``data_dir`` created or tightened to 0700."""
    inherited = os.umask(PRIVATE_UMASK)
    os.environ.setdefault(INHERITED_UMASK_ENV, f"{inherited:o}")
    data_dir.mkdir(parents=True, exist_ok=True)
    st = data_dir.stat()
    # Read or write for group/others goes; search alone (allow_search) is kept for running instances.
    if st.st_mode & 0o066 and st.st_uid == os.geteuid():
        data_dir.chmod(PRIVATE_DIR_MODE)


def private_path(path: Path, mode: int = PRIVATE_FILE_MODE) -> None:
    """Take group and other access away from ``path`` if this user owns it (others' files are left alone)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    if st.st_mode & 0o077 and st.st_uid == os.geteuid():
        path.chmod(mode)


def allow_search(path: Path, parents: int) -> None:
    """Let others pass through ``path`` and its ``parents`` nearest parents (search only, no listing)."""
    for p in [path, *list(path.parents)[:parents]]:
        st = p.stat()
        if not st.st_mode & 0o001 and st.st_uid == os.geteuid():
            p.chmod(st.st_mode & 0o7777 | 0o001)


def instance_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents with the inherited umask, not runed's private one.

    Working dirs and mount dirs belong to the instance (and may be outside the data dir, e.g. a
    ``working_dir`` or a host mount path): they get the modes they would get from the instance.
    """
    mode = 0o777 & ~inherited_umask()
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir()
            d.chmod(mode)


def inherited_umask() -> int:
    """The umask runed was started with (what instances get), or this process's own if none was recorded."""
    recorded = os.environ.get(INHERITED_UMASK_ENV, "")
    try:
        return int(recorded, 8) & 0o777
    except ValueError:
        current = os.umask(0)
        os.umask(current)
        return current
