"""SQLite store (WAL, numbered migrations, short IMMEDIATE transactions) shared by all runed roles."""

from __future__ import annotations

import builtins
import contextlib
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import sqlite_utils

from runed.core import errors
from runed.store.base import ADDED, DELETED, MODIFIED, AuditEntry, Change, ListResult, Record
from runed.store.notify import Notifier

SAFETY_POLL_SECONDS = 1.0


class StoreError(Exception):
    """The database cannot be opened or migrated (start-up failure with a clear message)."""


def _dumps(data: dict[str, Any]) -> str:
    return orjson.dumps(data).decode()


def _loads(raw: str | None) -> dict[str, Any] | None:
    return None if raw is None else orjson.loads(raw)  # type: ignore[no-any-return]


def _migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every packaged migration file, in order."""
    out = []
    for entry in resources.files("runed.store.migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            out.append((version, entry.name, entry.read_text()))
    return sorted(out)


class SQLiteStore:
    """Implements :class:`runed.store.base.Store` over one SQLite file.

    Every write runs in ``BEGIN IMMEDIATE`` so concurrent processes serialize on the write lock
    (with a busy timeout) instead of failing on lock upgrades; each committed write appends to the
    change log and pings the other processes.
    """

    def __init__(self, path: Path, *, changelog_keep: int = 100_000, notify: bool = True) -> None:
        self.path = path
        self.changelog_keep = changelog_keep
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
        self._writes_since_prune = 0
        self.notifier: Notifier | None = Notifier(path.parent / "run" / "notify") if notify else None
        self._migrate()

    # -- schema ---------------------------------------------------------------------------------
    def _migrate(self) -> None:
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                self.conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations "
                    "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
                )
                done = {r[0] for r in self.conn.execute("SELECT version FROM schema_migrations")}
                for version, name, sql in _migrations():
                    if version in done:
                        continue
                    for stmt in _split_sql(sql):
                        self.conn.execute(stmt)
                    self.conn.execute(
                        "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                        (version, name, time.time()),
                    )
                self.conn.execute("COMMIT")
            except sqlite3.Error as e:
                self.conn.execute("ROLLBACK")
                raise StoreError(f"cannot migrate database {self.path}: {e}") from None

    def schema_version(self) -> int:
        row = self.conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    # -- transactions ---------------------------------------------------------------------------
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
        if self.notifier is not None:
            self.notifier.notify()
        self._writes_since_prune += 1
        if self._writes_since_prune >= 1000:
            self._writes_since_prune = 0
            self.prune_changelog()

    def _log_change(self, kind: str, namespace: str, name: str, op: str, data: str | None) -> int:
        cur = self.conn.execute(
            "INSERT INTO changes (kind, namespace, name, op, data, ts) VALUES (?, ?, ?, ?, ?, ?)",
            (kind, namespace, name, op, data, time.time()),
        )
        self._pending_notify = True
        assert cur.lastrowid is not None
        return cur.lastrowid

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

    # -- change log -----------------------------------------------------------------------------
    def _current_revision(self) -> int:
        row = self.conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
        return int(row[0]) if row else 0

    def current_revision(self) -> int:
        with self._lock:
            return self._current_revision()

    def oldest_revision(self) -> int:
        """The oldest revision still in the change log (0 when nothing was ever pruned)."""
        with self._lock:
            row = self.conn.execute("SELECT MIN(revision) FROM changes").fetchone()
            pruned = self.conn.execute("SELECT value FROM meta WHERE key = 'changelog_pruned_to'").fetchone()
        if pruned is None:
            return 0
        return int(row[0]) if row[0] is not None else int(pruned[0]) + 1

    def changes_since(
        self, revision: int, kinds: Sequence[str] | None = None, limit: int = 1000
    ) -> builtins.list[Change]:
        sql = "SELECT revision, kind, namespace, name, op, data, ts FROM changes WHERE revision > ?"
        args: list[Any] = [revision]
        if kinds:
            sql += f" AND kind IN ({','.join('?' * len(kinds))})"
            args.extend(kinds)
        sql += " ORDER BY revision LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self.conn.execute(sql, args).fetchall()
        return [Change(r[0], r[1], r[2], r[3], r[4], _loads(r[5]), r[6]) for r in rows]

    def prune_changelog(self) -> None:
        with self.transaction():
            cutoff = self._current_revision() - self.changelog_keep
            if cutoff <= 0:
                return
            self.conn.execute("DELETE FROM changes WHERE revision <= ?", (cutoff,))
            self.conn.execute(
                "INSERT INTO meta (key, value) VALUES ('changelog_pruned_to', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(cutoff),),
            )

    async def watch(self, kinds: Sequence[str], since: int) -> AsyncIterator[Change]:
        """Every change to ``kinds`` after revision ``since``, in order, forever.

        Raises FailedPrecondition when ``since`` is older than the retained change log: the
        caller must re-list rather than silently miss changes.
        """
        rev = since
        while True:
            oldest = self.oldest_revision()
            if oldest and rev + 1 < oldest:
                raise errors.FailedPrecondition(
                    f"revision {rev} is older than the retained change log (oldest {oldest}); re-list and watch again"
                )
            batch = self.changes_since(rev, kinds)
            for change in batch:
                rev = change.revision
                yield change
            if len(batch) == 1000:
                continue
            if batch:
                # Drain anything committed meanwhile before sleeping.
                continue
            if self.notifier is not None:
                await self.notifier.wait(SAFETY_POLL_SECONDS)
            else:
                import asyncio

                await asyncio.sleep(0.05)
            # Catch up even without a wake-up: wake-ups are hints.
            rev = max(rev, since)

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

    def close(self) -> None:
        if self.notifier is not None:
            self.notifier.close()
            self.notifier = None
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()


def _split_sql(sql: str) -> list[str]:
    """Split a migration into statements (migrations hold no semicolons inside literals)."""
    lines = [ln for ln in sql.splitlines() if not ln.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def open_store(data_dir: Path, *, changelog_keep: int = 100_000) -> SQLiteStore:
    """Open (creating and migrating) the store in a data dir."""
    return SQLiteStore(data_dir / "runed.db", changelog_keep=changelog_keep)
