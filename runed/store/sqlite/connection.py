"""One SQLite connection per process: pragmas (WAL, busy timeout), a lock, nested IMMEDIATE transactions, wake-ups."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import sqlite_utils

from runed.core import errors
from runed.store.notify import Notifier
from runed.store.sqlite.schema import apply_migrations, schema_version


class StoreError(errors.FatalStartError):
    """The database cannot be opened or migrated (start-up failure with a clear message)."""


class Database:
    """An open, migrated SQLite file.

    Every write runs in ``BEGIN IMMEDIATE`` so concurrent processes serialize on the write lock
    (with a busy timeout) instead of failing on lock upgrades. After a commit that logged a change,
    :meth:`_after_commit` pings the other processes.
    """

    def __init__(self, path: Path, *, notify: bool = True) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=10000")
            conn.execute("PRAGMA foreign_keys=ON")
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"cannot open database {path}: {e}") from None
        self.conn = conn
        self.db = sqlite_utils.Database(conn)
        self._lock = threading.RLock()
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
                self.conn.execute("ROLLBACK")
                raise StoreError(f"cannot migrate database {self.path}: {e}") from None

    def schema_version(self) -> int:
        return schema_version(self.conn)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes atomically; nested calls join the outer transaction."""
        with self._lock:
            outer = self._depth == 0
            if outer:
                self.conn.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if outer:
                    self.conn.execute("ROLLBACK")
                    self._pending_notify = False
                raise
            self._depth -= 1
            if outer:
                self.conn.execute("COMMIT")
                if self._pending_notify:
                    self._pending_notify = False
                    self._after_commit()

    def _after_commit(self) -> None:
        """Runs after each commit that logged a change (subclasses add housekeeping)."""
        if self.notifier is not None:
            self.notifier.notify()

    def close(self) -> None:
        if self.notifier is not None:
            self.notifier.close()
            self.notifier = None
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()
