"""One SQLite connection per process: pragmas (WAL, busy timeout), a lock, nested IMMEDIATE transactions, wake-ups.

A full disk. SQLite itself never faults on one: ``mmap_size`` is pinned to 0 (pages are read with
read(2), never mapped, so a short filesystem cannot raise SIGBUS on a mapped page whatever a build's
default), and the WAL index (``-shm``), the one file SQLite does map, is grown with write(2) of a
byte per page before it is mapped, so growing it fails with an error instead of faulting. (The
SIGBUS seen with a full data dir came from prometheus-client's sparse mmap files: see
``runed/transport/metrics.py``.) SQLite deletes the ``-shm`` when the last connection closes, and
creating it again needs space: a start on a full disk gets it from the emergency ballast
(``runed/server/ballast.py``). What a full disk does to SQLite is fail a write with SQLITE_FULL, at
an INSERT or at COMMIT, after which SQLite may or may not have rolled the transaction back.
:meth:`Database.transaction` handles that in one place: it rolls back whatever is left (so the
connection never keeps a half-written transaction and the write lock) and raises
:class:`runed.core.errors.StorageFull` (RESOURCE_EXHAUSTED naming the data dir). The stored data is
untouched: a failed commit never reaches the database. Reads need no space and keep working.

Checkpoints (copying the WAL into the database file, with an fsync) run in a thread of their own,
never inside a commit: with SQLite's automatic checkpoint, the commit that took the WAL past 1,000
pages did it, on the caller's thread, which is the controller's event loop (≈60 ms of a commit of
1,000 deletions, more on a loaded disk: bench/README.md, "a delete that writes less"). After a commit, once the WAL
holds more than :data:`CHECKPOINT_BYTES`, a thread checkpoints it (PASSIVE: it waits for no reader
or writer); the WAL is cut back to a quarter of that when it is reused, so its size says what it holds.

When a commit is durable (``store.sqlite_synchronous``). By default (``normal``) a commit is done once
it is in the WAL, unsynced: it survives runed or any process being killed, and a power loss or an OS
crash can lose the last commits (never corrupt the database). ``full`` syncs the WAL at each commit,
so no acknowledged write is lost to those either. Serial single-record writes on the development
machine: 3,950 commits/s with ``normal``, 1,000-1,270/s with ``full``; on the controller's and the
API's threads, each commit then waits for the disk.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import sqlite_utils

from runed.core import errors, filemodes
from runed.core.config import StoreConfig
from runed.store import faults
from runed.store.notify import Notifier
from runed.store.sqlite.schema import apply_migrations, schema_version

log = logging.getLogger("runed.store")

# The WAL is checkpointed (in a thread) once it is this large: SQLite's default of 1,000 pages of 4 KiB.
CHECKPOINT_BYTES = 1000 * 4096
# Pages of 8 KiB, not SQLite's 4: an instance record is about 1.3 KiB, and in a table without rowids
# a 4 KiB page holds two or three of them, so deleting a thousand rebalanced hundreds of pages. With
# 8 KiB a transaction deleting 1,000 instance records and logging their deletions takes 15.4 ms
# against 23.7 (statements and commit; a fetch by key and a page of 100 were as fast or faster).
PAGE_SIZE = 8192
# How long closing waits for a checkpoint in flight (an interrupted one is harmless, a finished one tidier).
CLOSE_WAIT_SECONDS = 5.0
# errno values that mean "no room on the filesystem" (a full disk, a user's quota).
_NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class StoreError(errors.FatalStartError):
    """The database cannot be opened or migrated (start-up failure with a clear message)."""


def out_of_space(exc: BaseException) -> bool:
    """Whether ``exc`` says the filesystem is full: SQLITE_FULL from SQLite, ENOSPC or EDQUOT from the OS."""
    if isinstance(exc, sqlite3.Error):
        # The primary code is the low byte of the extended one.
        return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_FULL
    return isinstance(exc, OSError) and exc.errno in _NO_SPACE_ERRNOS


# The configuration's defaults, for a store opened without one (tools, tests): how long a write waits
# for another process's write lock, and when a commit is durable (the module docstring).
BUSY_TIMEOUT_SECONDS = StoreConfig.sqlite_busy_timeout_seconds
SYNCHRONOUS = StoreConfig.sqlite_synchronous


class Database:
    """An open, migrated SQLite file.

    Every write runs in ``BEGIN IMMEDIATE`` so concurrent processes serialize on the write lock
    (with a busy timeout) instead of failing on lock upgrades. After a commit that logged a change,
    :meth:`_after_commit` pings the other processes.
    """

    def __init__(
        self,
        path: Path,
        *,
        notify: bool = True,
        busy_timeout: float = BUSY_TIMEOUT_SECONDS,
        synchronous: str = SYNCHRONOUS,
    ) -> None:
        """``busy_timeout``: seconds a write waits for another's lock (``store.sqlite_busy_timeout_seconds``);
        ``synchronous``: ``normal`` or ``full`` (``store.sqlite_synchronous``, checked with the config)."""
        self.path = path
        self.busy_timeout = busy_timeout
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=self.busy_timeout)
            # Names and audit records: 0600 before WAL mode, as SQLite gives -wal and -shm the file's mode.
            for f in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                filemodes.private_path(f)
            # A new database's pages (one made before keeps its own: changing it means a VACUUM).
            conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys=ON")
            # Deleted rows are zeroed in the pages written anyway, but freed pages are not written
            # again only to be zeroed (Debian builds SQLite with secure_delete on): a deletion of a
            # thousand instances' records took half its statement time and most of its commit
            # zeroing them. Nothing stored is plaintext that must not be (secrets are sealed, tokens
            # hashed), so nothing is lost by leaving freed pages as they were.
            conn.execute("PRAGMA secure_delete=FAST")
            conn.execute("PRAGMA mmap_size=0")  # see the module docstring
            conn.execute("PRAGMA wal_autocheckpoint=0")  # in a thread instead (the module docstring)
            conn.execute(f"PRAGMA journal_size_limit={CHECKPOINT_BYTES // 4}")
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"cannot open database {path}: {e}") from None
        self.conn = conn
        self.db = sqlite_utils.Database(conn)
        self._lock = threading.RLock()
        # Reads while another thread holds ``conn`` (see :meth:`reading`), opened on first use.
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()
        self._wal = str(path) + "-wal"
        self._checkpointing: threading.Thread | None = None
        self._depth = 0
        self._pending_notify = False
        self.notifier: Notifier | None = Notifier(path.parent / "run" / "notify") if notify else None
        self._migrate()

    def _migrate(self) -> None:
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                apply_migrations(self.conn)
                self.conn.execute("COMMIT")
            except sqlite3.Error as e:
                self._rollback()
                raise StoreError(f"cannot migrate database {self.path}: {e}") from None

    def schema_version(self) -> int:
        return schema_version(self.conn)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes atomically; nested calls join the outer transaction.

        Raises:
            StorageFull: the disk is full (the transaction is rolled back, nothing was written).
            StoreUnavailable: another process held the write lock for longer than the busy timeout
                (nothing was written; the caller may retry).
        """
        with self._lock:
            outer = self._depth == 0
            if outer:
                try:
                    self.conn.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as exc:
                    if (getattr(exc, "sqlite_errorcode", 0) & 0xFF) not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                        raise
                    # The client is told to retry; the cause (and the setting) goes to the log.
                    why = (
                        f"{self.path.name} is busy: another process held its write lock for more than"
                        f" {self.busy_timeout:g} s (store.sqlite_busy_timeout_seconds)"
                    )
                    raise faults.unavailable(sqlite3.OperationalError(why)) from None
            self._depth += 1
            try:
                yield
            except BaseException as exc:
                self._depth -= 1
                if outer:
                    self._rollback()
                    if out_of_space(exc):
                        raise errors.storage_full(self.path.parent) from exc
                raise
            self._depth -= 1
            if outer:
                try:
                    self.conn.execute("COMMIT")
                except sqlite3.Error as exc:
                    # SQLite may have rolled back already (SQLITE_FULL can do that) or may not.
                    self._rollback()
                    if out_of_space(exc):
                        raise errors.storage_full(self.path.parent) from exc
                    raise
                self._checkpoint_soon()
                if self._pending_notify:
                    self._pending_notify = False
                    self._after_commit()

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection for a read: this one, unless another thread holds it in a transaction (a
        long commit beside the event loop); then a second connection, for reads only, which sees
        what was committed last instead of waiting (in WAL mode a reader never waits on the writer).

        Why: a reconcile pass's reads waited for the commit of a deletion's records, 5-9 ms of the
        controller's event loop stalled at the end of a delete of 1,000 (bench/README.md)."""
        if self._lock.acquire(blocking=False):
            try:
                yield self.conn
            finally:
                self._lock.release()
            return
        with self._reader_lock:
            if self._reader is None:
                self._reader = self._open_reader()
            yield self._reader

    def _open_reader(self) -> sqlite3.Connection:
        conn = self._aside()
        conn.execute("PRAGMA query_only=1")
        return conn

    def _aside(self) -> sqlite3.Connection:
        """A second connection to the file (reads, checkpoints): pages never mapped (see the module
        docstring), the same busy timeout."""
        conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=self.busy_timeout)
        try:
            conn.execute("PRAGMA mmap_size=0")
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    def _checkpoint_soon(self) -> None:
        """Checkpoint the WAL in a thread once it holds more than :data:`CHECKPOINT_BYTES`."""
        try:
            if os.stat(self._wal).st_size < CHECKPOINT_BYTES:
                return
        except OSError:
            return
        if self._checkpointing is not None and self._checkpointing.is_alive():
            return
        self._checkpointing = threading.Thread(target=self._checkpoint, name="sqlite-checkpoint", daemon=True)
        self._checkpointing.start()

    def _checkpoint(self) -> None:
        """One PASSIVE checkpoint on a connection of its own (a failure, a full disk say, waits for the next)."""
        try:
            conn = self._aside()
        except sqlite3.Error as e:
            log.debug("checkpoint of %s: %s", self.path, e)
            return
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as e:
            log.debug("checkpoint of %s: %s", self.path, e)
        finally:
            conn.close()

    def _rollback(self) -> None:
        """End the open transaction, if SQLite has not ended it already, and forget its wake-up."""
        self._pending_notify = False
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error as e:
                log.warning("rollback failed on %s: %s", self.path, e)

    def _after_commit(self) -> None:
        """Runs after each commit that logged a change (subclasses add housekeeping)."""
        if self.notifier is not None:
            self.notifier.notify()

    def close(self) -> None:
        if self._checkpointing is not None:
            self._checkpointing.join(CLOSE_WAIT_SECONDS)
        if self.notifier is not None:
            self.notifier.close()
            self.notifier = None
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()
        with self._reader_lock, contextlib.suppress(sqlite3.Error):
            if self._reader is not None:
                self._reader.close()
                self._reader = None
