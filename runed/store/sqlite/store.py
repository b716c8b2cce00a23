"""The SQLite implementation of :class:`runed.store.base.Store`: the shared core over one SQLite file."""

from __future__ import annotations

import itertools
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runed.store.base import DELETED
from runed.store.core import DELETE_CHUNK, SQLCore
from runed.store.offload import Offload
from runed.store.sqlite.connection import BUSY_TIMEOUT_SECONDS, SYNCHRONOUS, Database

_INSERT_CHANGE = "INSERT INTO changes (kind, namespace, name, op, data, ts) VALUES (?, ?, ?, ?, ?, ?)"


class SQLiteStore(Database, SQLCore):
    """Implements :class:`runed.store.base.Store` over one SQLite file (the logic is :class:`SQLCore`'s).

    Every write runs in ``BEGIN IMMEDIATE`` so concurrent processes serialize on the write lock
    (with a busy timeout) instead of failing on lock upgrades: that is the write lock, so
    :meth:`_lock_writes` has nothing left to do. The change log's AUTOINCREMENT id is the revision,
    and each committed write pings the other processes.
    """

    unique_violation = sqlite3.IntegrityError

    def __init__(
        self,
        path: Path,
        *,
        changelog_keep: int = 100_000,
        audit_keep: int = 100_000,
        notify: bool = True,
        busy_timeout: float = BUSY_TIMEOUT_SECONDS,
        synchronous: str = SYNCHRONOUS,
    ) -> None:
        self.changelog_keep = changelog_keep
        self.audit_keep = audit_keep
        self._writes_since_prune = 0
        # Inline: a local file never waits on the network (the measurement is in runed.store.offload).
        self.offload = Offload(1, inline=True)
        super().__init__(path, notify=notify, busy_timeout=busy_timeout, synchronous=synchronous)

    # The core's housekeeping (wake-up, then prune), not the bare connection's wake-up.
    _after_commit = SQLCore._after_commit

    def close(self) -> None:
        self.offload.close(wait=True)  # a long unit in flight ends before the connection closes
        super().close()

    def _fetchall(self, sql: str, args: Sequence[Any] = ()) -> Sequence[Sequence[Any]]:
        with self.reading() as conn:
            return conn.execute(sql, args).fetchall()

    def _execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        self.conn.execute(sql, args)

    def _lock_writes(self) -> None:
        """Nothing: ``BEGIN IMMEDIATE`` took the database's write lock already."""

    def _log_change(self, kind: str, namespace: str, name: str, op: str, data: str | None) -> int:
        cur = self.conn.execute(
            _INSERT_CHANGE,
            (kind, namespace, name, op, data, time.time()),
        )
        self._pending_notify = True
        assert cur.lastrowid is not None
        return cur.lastrowid

    def _log_deleting(self, keys: Sequence[tuple[str, str, str]]) -> bool:
        """The change log's rows are copied from the records inside SQLite, one statement per
        :data:`DELETE_CHUNK` keys; their order is kept by a ``CROSS JOIN`` over the keys' ``VALUES``
        (SQLite makes its left table the outer loop, each record then found by its primary key).
        Before, each record's data came into Python (``DELETE ... RETURNING``) and went back in an
        ``INSERT``: a deletion of 1,000 instances and their actions took 7.8 ms of SQLite's CPU and
        3 ms of Python's, against 6.8 ms and none now (bench/README.md, "the tail of a deletion")."""
        keys = list(dict.fromkeys(keys))  # a key named twice is deleted, and logged, once
        now = time.time()
        for i in range(0, len(keys), DELETE_CHUNK):
            chunk = keys[i : i + DELETE_CHUNK]
            cur = self.conn.execute(
                f"WITH k (kind, namespace, name) AS (VALUES {', '.join(['(?, ?, ?)'] * len(chunk))}) "
                "INSERT INTO changes (kind, namespace, name, op, data, ts) "
                "SELECT o.kind, o.namespace, o.name, ?, o.data, ? FROM k CROSS JOIN objects AS o "
                "ON o.kind = k.kind AND o.namespace = k.namespace AND o.name = k.name",
                [*itertools.chain.from_iterable(chunk), DELETED, now],
            )
            if cur.rowcount > 0:
                self._pending_notify = True
        return True

    def _current_revision(self) -> int:
        row = self._fetchone("SELECT seq FROM sqlite_sequence WHERE name = 'changes'")
        return int(row[0]) if row else 0


def open_store(data_dir: Path, *, changelog_keep: int = 100_000, audit_keep: int = 100_000) -> SQLiteStore:
    """Open (creating and migrating) the store in a data dir."""
    return SQLiteStore(data_dir / "runed.db", changelog_keep=changelog_keep, audit_keep=audit_keep)
