"""The PostgreSQL implementation of :class:`runed.store.base.Store`.

Transactions are per thread: the outermost takes a pooled connection and nested calls join it.
Every write transaction first locks the single ``revision`` row; each change then takes the next
revision with ``UPDATE ... RETURNING`` under that lock, which is held until commit. So writes
serialize as under SQLite's ``BEGIN IMMEDIATE`` (read-modify-write never loses an update) and
revisions become visible in order: ``changes_since(n)`` never later shows a revision below one it
already returned.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import orjson
import psycopg
from psycopg import errors as pgerrors
from psycopg_pool import ConnectionPool

from runed.core import errors
from runed.store.base import ADDED, DELETED, MODIFIED, AuditEntry, Change, ListResult, Record
from runed.store.postgres.notify import CHANNEL, PgNotifier
from runed.store.postgres.schema import apply_migrations, schema_version
from runed.store.sqlite.connection import StoreError

log = logging.getLogger("runed.store")

SAFETY_POLL_SECONDS = 1.0
_PRUNE_EVERY = 1000


def _dumps(data: dict[str, Any]) -> str:
    return orjson.dumps(data).decode()


def _loads(raw: str | None) -> dict[str, Any] | None:
    return None if raw is None else orjson.loads(raw)  # type: ignore[no-any-return]


def redact_url(url: str) -> str:
    """The URL without a password (for messages)."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "<unparseable url>"
    return (
        f"postgresql://{info.get('user', '')}@{info.get('host', '')}:{info.get('port', 5432)}/{info.get('dbname', '')}"
    )


class _Tx(threading.local):
    conn: psycopg.Connection | None = None
    depth = 0
    locked = False
    pending = False


class PostgresStore:
    """Implements :class:`runed.store.base.Store` over one PostgreSQL database."""

    def __init__(self, url: str, *, changelog_keep: int = 100_000, notify: bool = True, pool_size: int = 4) -> None:
        self.url = url
        self.changelog_keep = changelog_keep
        self._writes_since_prune = 0
        self._tx = _Tx()
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
                apply_migrations(conn)
        except psycopg.Error as e:
            raise StoreError(f"cannot open database {redact_url(url)}: {e}") from None
        self._pool = ConnectionPool(
            url, min_size=1, max_size=pool_size, kwargs={"autocommit": True}, open=True, name="runed-store"
        )
        self.notifier: PgNotifier | None = PgNotifier(url) if notify else None

    # -- connections and transactions ------------------------------------------------------------
    @contextlib.contextmanager
    def _conn(self) -> Iterator[psycopg.Connection]:
        """The thread's transaction connection, or a pooled autocommit one for a lone read."""
        if self._tx.conn is not None:
            yield self._tx.conn
        else:
            with self._pool.connection() as conn:
                yield conn

    def schema_version(self) -> int:
        with self._conn() as conn:
            return schema_version(conn)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes atomically; nested calls (in the same thread) join the outer transaction."""
        tx = self._tx
        if tx.conn is not None:
            tx.depth += 1
            try:
                yield
            finally:
                tx.depth -= 1
            return
        pending = False
        with self._pool.connection() as conn:
            tx.conn, tx.depth, tx.locked, tx.pending = conn, 1, False, False
            try:
                with conn.transaction():
                    yield
                pending = tx.pending
            finally:
                tx.conn, tx.depth, tx.locked, tx.pending = None, 0, False, False
        if pending:
            self._after_commit()

    def _lock_writes(self) -> psycopg.Connection:
        """Take the revision row lock for the current transaction (once); it is held until commit."""
        conn = self._tx.conn
        assert conn is not None, "writes run inside transaction()"
        if not self._tx.locked:
            conn.execute("SELECT value FROM revision WHERE id = 1 FOR UPDATE")
            self._tx.locked = True
        return conn

    def _log_change(self, kind: str, namespace: str, name: str, op: str, data: str | None) -> int:
        conn = self._lock_writes()
        row = conn.execute("UPDATE revision SET value = value + 1 WHERE id = 1 RETURNING value").fetchone()
        assert row is not None
        rev = int(row[0])
        conn.execute(
            "INSERT INTO changes (revision, kind, namespace, name, op, data, ts) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (rev, kind, namespace, name, op, data, time.time()),
        )
        if not self._tx.pending:
            # Delivered at commit (never for a rolled-back transaction).
            conn.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
            self._tx.pending = True
        return rev

    def _after_commit(self) -> None:
        if self.notifier is not None:
            self.notifier.notify()
        self._writes_since_prune += 1
        if self._writes_since_prune >= _PRUNE_EVERY:
            self._writes_since_prune = 0
            try:
                self.prune_changelog()
            except psycopg.Error as e:
                log.warning("cannot prune the change log: %s", e)

    # -- the change log ------------------------------------------------------------------------
    def current_revision(self) -> int:
        with self._conn() as conn:
            row = conn.execute("SELECT value FROM revision WHERE id = 1").fetchone()
        return int(row[0]) if row else 0

    def oldest_revision(self) -> int:
        """The oldest revision still in the change log (0 when nothing was ever pruned)."""
        with self._conn() as conn:
            row = conn.execute("SELECT MIN(revision) FROM changes").fetchone()
            pruned = conn.execute("SELECT value FROM meta WHERE key = 'changelog_pruned_to'").fetchone()
        if pruned is None:
            return 0
        return int(row[0]) if row and row[0] is not None else int(pruned[0]) + 1

    def changes_since(
        self, revision: int, kinds: Sequence[str] | None = None, limit: int = 1000
    ) -> builtins.list[Change]:
        sql = "SELECT revision, kind, namespace, name, op, data, ts FROM changes WHERE revision > %s"
        args: list[Any] = [revision]
        if kinds:
            sql += " AND kind = ANY(%s)"
            args.append(list(kinds))
        sql += " ORDER BY revision LIMIT %s"
        args.append(limit)
        with self._conn() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [Change(int(r[0]), r[1], r[2], r[3], r[4], _loads(r[5]), r[6]) for r in rows]

    def prune_changelog(self) -> None:
        with self.transaction():
            conn = self._lock_writes()
            row = conn.execute("SELECT value FROM revision WHERE id = 1").fetchone()
            cutoff = (int(row[0]) if row else 0) - self.changelog_keep
            if cutoff <= 0:
                return
            conn.execute("DELETE FROM changes WHERE revision <= %s", (cutoff,))
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('changelog_pruned_to', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(cutoff),),
            )

    async def watch(self, kinds: Sequence[str], since: int) -> AsyncIterator[Change]:
        """Every change to ``kinds`` after revision ``since``, in order, forever.

        Raises FailedPrecondition when ``since`` is older than the retained change log.
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
            if batch:
                continue
            if self.notifier is not None:
                await self.notifier.wait(SAFETY_POLL_SECONDS)
            else:
                await asyncio.sleep(0.05)

    # -- reads ----------------------------------------------------------------------------------
    @staticmethod
    def _record(kind: str, row: Sequence[Any]) -> Record:
        return Record(kind, row[0], row[1], orjson.loads(row[2]), int(row[3]), int(row[4]))

    def get(self, kind: str, namespace: str, name: str) -> Record | None:
        with self._conn() as conn:
            row = conn.execute(
                "SELECT namespace, name, data, revision, created_revision FROM objects "
                "WHERE kind = %s AND namespace = %s AND name = %s",
                (kind, namespace, name),
            ).fetchone()
        return None if row is None else self._record(kind, row)

    def get_at(self, kind: str, namespace: str, name: str, revision: int) -> Record | None:
        """The object as it was at ``revision`` (None when it did not exist then); see the SQLite store."""
        current = self.get(kind, namespace, name)
        if current is not None and current.revision <= revision:
            return current
        with self._conn() as conn:
            row = conn.execute(
                "SELECT revision, op, data FROM changes WHERE kind = %s AND revision <= %s AND namespace = %s "
                "AND name = %s ORDER BY revision DESC LIMIT 1",
                (kind, revision, namespace, name),
            ).fetchone()
        if row is None:
            existed = current is not None and current.created_revision <= revision
            return current if existed else None
        if row[1] == DELETED or row[2] is None:
            return None
        created = current.created_revision if current is not None and current.created_revision <= row[0] else 0
        return Record(kind, namespace, name, orjson.loads(row[2]), int(row[0]), created)

    def get_by_index(self, kind: str, index_key: str) -> Record | None:
        with self._conn() as conn:
            row = conn.execute(
                "SELECT namespace, name, data, revision, created_revision FROM objects "
                "WHERE kind = %s AND index_key = %s",
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
        sql = "SELECT namespace, name, data, revision, created_revision FROM objects WHERE kind = %s"
        args: list[Any] = [kind]
        if namespace is not None:
            sql += " AND namespace = %s"
            args.append(namespace)
        if after is not None:
            sql += " AND (namespace, name) > (%s, %s)"
            args.extend(after)
        sql += " ORDER BY namespace, name"
        if limit is not None:
            sql += " LIMIT %s"
            args.append(limit + 1)
        # The revision first: rows read after it may be newer (a watcher sees them again), never older.
        rev = self.current_revision()
        with self._conn() as conn:
            rows = conn.execute(sql, args).fetchall()
        more = limit is not None and len(rows) > limit
        if more:
            rows = rows[:limit]
        items = [self._record(kind, r) for r in rows]
        cursor = f"{items[-1].namespace}/{items[-1].name}" if more and items else ""
        return ListResult(items=items, next_cursor=cursor, revision=rev)

    def count(self, kind: str, namespace: str | None = None) -> int:
        sql = "SELECT COUNT(*) FROM objects WHERE kind = %s"
        args: list[Any] = [kind]
        if namespace is not None:
            sql += " AND namespace = %s"
            args.append(namespace)
        with self._conn() as conn:
            row = conn.execute(sql, args).fetchone()
        return int(row[0]) if row else 0

    # -- writes ---------------------------------------------------------------------------------
    def create(
        self, kind: str, namespace: str, name: str, data: dict[str, Any], *, index_key: str | None = None
    ) -> Record:
        with self.transaction():
            self._lock_writes()
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
            self._lock_writes()
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
        rev = self._log_change(kind, namespace, name, MODIFIED if existing else ADDED, raw)
        created = existing.created_revision if existing else rev
        conn = self._lock_writes()
        try:
            # A savepoint: a refused index key leaves the outer transaction usable.
            with conn.transaction():
                conn.execute(
                    "INSERT INTO objects (kind, namespace, name, data, revision, created_revision, index_key) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (kind, namespace, name) DO UPDATE SET "
                    "data = excluded.data, revision = excluded.revision, "
                    "index_key = COALESCE(excluded.index_key, objects.index_key)",
                    (kind, namespace, name, raw, rev, created, index_key),
                )
        except pgerrors.UniqueViolation:
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
        """Atomic read-modify-write (under the write lock, so safe across processes and hosts)."""
        with self.transaction():
            self._lock_writes()
            existing = self.get(kind, namespace, name)
            new = mutate(orjson.loads(orjson.dumps(existing.data)) if existing else None)
            if new is None:
                return existing
            return self._write(kind, namespace, name, new, existing, index_key)

    def delete(self, kind: str, namespace: str, name: str, *, expect_revision: int | None = None) -> Record | None:
        with self.transaction():
            conn = self._lock_writes()
            existing = self.get(kind, namespace, name)
            if existing is None:
                return None
            if expect_revision is not None and existing.revision != expect_revision:
                raise errors.Conflict(f'{kind} "{name}" was modified concurrently')
            rev = self._log_change(kind, namespace, name, DELETED, _dumps(existing.data))
            conn.execute(
                "DELETE FROM objects WHERE kind = %s AND namespace = %s AND name = %s", (kind, namespace, name)
            )
            return Record(kind, namespace, name, existing.data, rev, existing.created_revision)

    # -- audit and meta -------------------------------------------------------------------------
    def audit(self, entry: AuditEntry) -> None:
        with self._conn() as conn:
            conn.execute(
                "INSERT INTO audit (ts, subject, method, resource, verb, namespace, name, outcome, code, "
                "request_id, peer, detail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
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
            "detail FROM audit WHERE id > %s"
        )
        args: list[Any] = [since_id]
        if subject:
            sql += " AND subject = %s"
            args.append(subject)
        sql += " ORDER BY id LIMIT %s"
        args.append(limit)
        with self._conn() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [
            AuditEntry(
                id=int(r[0]),
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
        with self._conn() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = %s", (key,)).fetchone()
        return None if row is None else str(row[0])

    def meta_set(self, key: str, value: str) -> None:
        with self.transaction():
            # Under the write lock too: a transaction never takes the meta row before the revision row.
            conn = self._lock_writes()
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def close(self) -> None:
        if self.notifier is not None:
            self.notifier.close()
            self.notifier = None
        self._pool.close()
