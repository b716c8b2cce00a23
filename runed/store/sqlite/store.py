"""The SQLite implementation of :class:`runed.store.base.Store`: objects by (kind, namespace, name), audit, meta."""

from __future__ import annotations

import builtins
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from runed.core import errors
from runed.store.base import ADDED, DELETED, MODIFIED, AuditEntry, ListResult, Record
from runed.store.sqlite.changelog import ChangeLog


def _dumps(data: dict[str, Any]) -> str:
    return orjson.dumps(data).decode()


class SQLiteStore(ChangeLog):
    """Implements :class:`runed.store.base.Store` over one SQLite file.

    Every write runs in ``BEGIN IMMEDIATE`` so concurrent processes serialize on the write lock
    (with a busy timeout) instead of failing on lock upgrades; each committed write appends to the
    change log and pings the other processes.
    """

    # -- reads ----------------------------------------------------------------------------------
    @staticmethod
    def _record(kind: str, row: Sequence[Any]) -> Record:
        return Record(kind, row[0], row[1], orjson.loads(row[2]), row[3], row[4])

    def get(self, kind: str, namespace: str, name: str) -> Record | None:
        with self._lock:
            row = self.conn.execute(
                "SELECT namespace, name, data, revision, created_revision FROM objects "
                "WHERE kind = ? AND namespace = ? AND name = ?",
                (kind, namespace, name),
            ).fetchone()
        return None if row is None else self._record(kind, row)

    def get_at(self, kind: str, namespace: str, name: str, revision: int) -> Record | None:
        """The object as it was at ``revision`` (None when it did not exist then), from the change log.

        The current object answers when it was last written at or before ``revision``; otherwise the
        key's last change up to ``revision`` does. If pruning removed that change, the current object
        is the best that is known and is returned (when it existed by then).
        """
        current = self.get(kind, namespace, name)
        if current is not None and current.revision <= revision:
            return current
        with self._lock:
            # The (kind, revision) index walked backwards from ``revision``: a short walk for the
            # recent revisions watchers resume from.
            row = self.conn.execute(
                "SELECT revision, op, data FROM changes WHERE kind = ? AND revision <= ? AND namespace = ? "
                "AND name = ? ORDER BY revision DESC LIMIT 1",
                (kind, revision, namespace, name),
            ).fetchone()
        if row is None:
            existed = current is not None and current.created_revision <= revision
            return current if existed else None
        if row[1] == DELETED or row[2] is None:
            return None
        created = current.created_revision if current is not None and current.created_revision <= row[0] else 0
        return Record(kind, namespace, name, orjson.loads(row[2]), row[0], created)

    def get_by_index(self, kind: str, index_key: str) -> Record | None:
        with self._lock:
            row = self.conn.execute(
                "SELECT namespace, name, data, revision, created_revision FROM objects "
                "WHERE kind = ? AND index_key = ?",
                (kind, index_key),
            ).fetchone()
        return None if row is None else self._record(kind, row)

    def list(
        self,
        kind: str,
        namespace: str | None = None,
        *,
        after: tuple[str, str] | None = None,
        limit: int | None = None,
    ) -> ListResult:
        """Objects ordered by (namespace, name); ``after`` continues a previous page."""
        sql = "SELECT namespace, name, data, revision, created_revision FROM objects WHERE kind = ?"
        args: list[Any] = [kind]
        if namespace is not None:
            sql += " AND namespace = ?"
            args.append(namespace)
        if after is not None and namespace is not None:
            # Within one namespace compare the name alone: with "namespace = ?" plus a row-value
            # comparison SQLite picks the (kind, name) index and scans the whole kind per page.
            if after[0] > namespace:
                sql += " AND 0"
            elif after[0] == namespace:
                sql += " AND name > ?"
                args.append(after[1])
        elif after is not None:
            sql += " AND (namespace, name) > (?, ?)"
            args.extend(after)
        sql += " ORDER BY namespace, name"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit + 1)
        with self._lock:
            rows = self.conn.execute(sql, args).fetchall()
            rev = self._current_revision()
        more = limit is not None and len(rows) > limit
        if more:
            rows = rows[:limit]
        items = [self._record(kind, r) for r in rows]
        cursor = f"{items[-1].namespace}/{items[-1].name}" if more and items else ""
        return ListResult(items=items, next_cursor=cursor, revision=rev)

    def count(self, kind: str, namespace: str | None = None) -> int:
        sql = "SELECT COUNT(*) FROM objects WHERE kind = ?"
        args: list[Any] = [kind]
        if namespace is not None:
            sql += " AND namespace = ?"
            args.append(namespace)
        with self._lock:
            return int(self.conn.execute(sql, args).fetchone()[0])

    # -- writes ---------------------------------------------------------------------------------
    def create(
        self, kind: str, namespace: str, name: str, data: dict[str, Any], *, index_key: str | None = None
    ) -> Record:
        with self.transaction():
            if self.get(kind, namespace, name) is not None:
                raise errors.already_exists(kind, name, namespace or None)
            return self._write(kind, namespace, name, data, None, index_key)

    def put(
        self,
        kind: str,
        namespace: str,
        name: str,
        data: dict[str, Any],
        *,
        expect_revision: int | None = None,
        index_key: str | None = None,
    ) -> Record:
        """Create or replace. ``expect_revision`` (0 = must not exist) guards against lost updates."""
        with self.transaction():
            existing = self.get(kind, namespace, name)
            if expect_revision is not None:
                actual = existing.revision if existing else 0
                if actual != expect_revision:
                    raise errors.Conflict(
                        f'{kind} "{name}" was modified concurrently (revision {actual}, expected {expect_revision})'
                    )
            return self._write(kind, namespace, name, data, existing, index_key)

    def _write(
        self,
        kind: str,
        namespace: str,
        name: str,
        data: dict[str, Any],
        existing: Record | None,
        index_key: str | None,
    ) -> Record:
        raw = _dumps(data)
        op = MODIFIED if existing else ADDED
        rev = self._log_change(kind, namespace, name, op, raw)
        created = existing.created_revision if existing else rev
        try:
            self.conn.execute(
                "INSERT INTO objects (kind, namespace, name, data, revision, created_revision, index_key) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (kind, namespace, name) DO UPDATE SET "
                "data = excluded.data, revision = excluded.revision, "
                "index_key = COALESCE(excluded.index_key, objects.index_key)",
                (kind, namespace, name, raw, rev, created, index_key),
            )
        except sqlite3.IntegrityError:
            raise errors.AlreadyExists(f"{kind} index key already in use") from None
        return Record(kind, namespace, name, data, rev, created)

    def update(
        self,
        kind: str,
        namespace: str,
        name: str,
        mutate: Callable[[dict[str, Any] | None], dict[str, Any] | None],
        *,
        index_key: str | None = None,
    ) -> Record | None:
        """Atomic read-modify-write: ``mutate`` gets the current data (None when absent) and returns
        the new data, or None to leave the object as it is. Safe across processes (one IMMEDIATE
        transaction), so two roles may update the same object without losing changes."""
        with self.transaction():
            existing = self.get(kind, namespace, name)
            new = mutate(orjson.loads(orjson.dumps(existing.data)) if existing else None)
            if new is None:
                return existing
            return self._write(kind, namespace, name, new, existing, index_key)

    def delete(self, kind: str, namespace: str, name: str, *, expect_revision: int | None = None) -> Record | None:
        with self.transaction():
            existing = self.get(kind, namespace, name)
            if existing is None:
                return None
            if expect_revision is not None and existing.revision != expect_revision:
                raise errors.Conflict(f'{kind} "{name}" was modified concurrently')
            rev = self._log_change(kind, namespace, name, DELETED, _dumps(existing.data))
            self.conn.execute(
                "DELETE FROM objects WHERE kind = ? AND namespace = ? AND name = ?", (kind, namespace, name)
            )
            return Record(kind, namespace, name, existing.data, rev, existing.created_revision)

    # -- audit and meta -------------------------------------------------------------------------
    def audit(self, entry: AuditEntry) -> None:
        with self.transaction():
            self.conn.execute(
                "INSERT INTO audit (ts, subject, method, resource, verb, namespace, name, outcome, code, "
                "request_id, peer, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.ts or time.time(),
                    entry.subject,
                    entry.method,
                    entry.resource,
                    entry.verb,
                    entry.namespace,
                    entry.name,
                    entry.outcome,
                    entry.code,
                    entry.request_id,
                    entry.peer,
                    entry.detail,
                ),
            )

    def list_audit(
        self, *, since_id: int = 0, limit: int = 100, subject: str | None = None
    ) -> builtins.list[AuditEntry]:
        sql = (
            "SELECT id, ts, subject, method, resource, verb, namespace, name, outcome, code, request_id, peer, "
            "detail FROM audit WHERE id > ?"
        )
        args: list[Any] = [since_id]
        if subject:
            sql += " AND subject = ?"
            args.append(subject)
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self.conn.execute(sql, args).fetchall()
        return [
            AuditEntry(
                id=r[0],
                ts=r[1],
                subject=r[2],
                method=r[3],
                resource=r[4],
                verb=r[5],
                namespace=r[6],
                name=r[7],
                outcome=r[8],
                code=r[9],
                request_id=r[10],
                peer=r[11],
                detail=r[12],
            )
            for r in rows
        ]

    def meta_get(self, key: str) -> str | None:
        with self._lock:
            row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def meta_set(self, key: str, value: str) -> None:
        with self.transaction():
            self.conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )


def open_store(data_dir: Path, *, changelog_keep: int = 100_000) -> SQLiteStore:
    """Open (creating and migrating) the store in a data dir."""
    return SQLiteStore(data_dir / "runed.db", changelog_keep=changelog_keep)
