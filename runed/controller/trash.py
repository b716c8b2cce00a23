"""Removal of deleted instances' directories, together in the background.

Why: a deletion of a thousand instances removed a thousand directories one by one, each a
``shutil.rmtree`` in a worker thread holding the GIL: a quarter of the controller's time while it
was also signalling the instances and writing their records (bench/README.md). Now a forgotten
instance's directory is removed once its record's deletion is committed (:meth:`Trash.remove`),
and a directory no record names is renamed into the data dir's trash at once (one system call:
nothing is left under its name). Both go by one ``rm -rf`` per batch, a process of its own (no
GIL, the other core), repeated while more arrive. What a crash leaves in the trash is removed when
the controller starts.

Secret mount files are removed before an instance's directory gets here (``Launcher.release``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

log = logging.getLogger("runed.controller")

TRASH_NAME = "trash"
# Paths per ``rm`` command line (well under the kernel's argument limit for data dir paths).
BATCH = 2000


def empty(root: Path, also: list[str] | None = None) -> None:
    """Remove everything in ``root``, and the paths ``also`` (blocking): one ``rm -rf`` per batch,
    ``shutil.rmtree`` without one."""
    try:
        names = [str(root / n) for n in sorted(os.listdir(root))]
    except FileNotFoundError:
        names = []
    names += also or []
    rm = shutil.which("rm")
    for i in range(0, len(names), BATCH):
        paths = names[i : i + BATCH]
        if rm is not None:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    [rm, "-rf", "--", *paths],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    close_fds=True,
                    check=False,
                )
        for p in paths:
            # What rm could not remove (or no rm): the slow way.
            if os.path.lexists(p):
                shutil.rmtree(p, ignore_errors=True)
                with contextlib.suppress(OSError):
                    os.unlink(p)  # a file, not a directory


class Trash:
    """The trash of one data dir (``<data dir>/trash``)."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / TRASH_NAME
        # Unique entry names across restarts: the same directory name may be trashed twice.
        self._seq = itertools.count(time.time_ns())
        self._task: asyncio.Task[None] | None = None
        self._again = False
        # Directories to remove with the trash's entries (:meth:`remove`).
        self._doomed: list[str] = []

    def put(self, d: Path) -> None:
        """Move the directory ``d`` into the trash and have it emptied (a missing ``d`` is nothing to do)."""
        target = f"{self.root}/{d.name}.{next(self._seq)}"
        try:
            os.rename(d, target)  # not Path.rename: a thousand at once, the loop waits for each
        except FileNotFoundError:
            if not d.exists():
                return
            try:
                self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.rename(d, target)
            except OSError as e:
                log.warning("cannot move %s to the trash (%s); removing it in place", d, e)
                shutil.rmtree(d, ignore_errors=True)
                return
        except OSError as e:
            log.warning("cannot move %s to the trash (%s); removing it in place", d, e)
            shutil.rmtree(d, ignore_errors=True)
            return
        self.empty_soon()

    def remove(self, dirs: list[Path]) -> None:
        """Remove ``dirs`` in the background, as the trash's entries are, without moving them here
        first: for forgotten instances' directories, once their records' deletions are committed
        (their names are unique; one a crash leaves is removed when the controller starts, as a
        directory no record names). A thousand renames were 40-50 ms of the event loop right after
        a deletion's commit (traced; bench/README.md, "ends in batches")."""
        self._doomed.extend(str(d) for d in dirs)
        self.empty_soon()

    def empty_soon(self) -> None:
        """Empty the trash in the background (here and now when no event loop runs)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            doomed, self._doomed = self._doomed, []
            empty(self.root, doomed)
            return
        if self._task is not None:
            self._again = True  # taken by the run in flight once it is done
            return
        self._task = loop.create_task(self._empty())

    async def _empty(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._again = False
                doomed, self._doomed = self._doomed, []
                await loop.run_in_executor(None, empty, self.root, doomed)
                if not self._again:
                    return
        except Exception as e:  # pragma: no cover - an unexpected failure must not end the controller
            log.warning("cannot empty the trash %s: %s", self.root, e)
        finally:
            self._task = None

    async def done(self, timeout: float = 5.0) -> None:
        """Wait for the emptying in flight (at shutdown)."""
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=timeout)
