"""The PostgreSQL dialect and connections under :class:`runed.store.core.SQLCore`.

Transactions are per thread: the outermost takes a pooled connection and nested calls join it.
Every write transaction first locks the single ``revision`` row; each change then takes the next
revision with ``UPDATE ... RETURNING`` under that lock, which is held until commit. So writes
serialize as under SQLite's ``BEGIN IMMEDIATE`` (read-modify-write never loses an update) and
revisions become visible in order: ``changes_since(n)`` never later shows a revision below one it
already returned.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg import errors as pgerrors

from runed.store.core import SQLCore
from runed.store.offload import Offload
from runed.store.postgres.notify import CHANNEL, PgNotifier
from runed.store.postgres.pool import Pool
from runed.store.postgres.schema import apply_migrations, schema_version
from runed.store.sqlite.connection import StoreError


@functools.lru_cache(maxsize=256)
def _dialect(sql: str) -> str:
    """The core's ``?`` placeholders as psycopg's ``%s`` (no statement of the core has a literal ``?`` or ``%``)."""
    return sql.replace("?", "%s")


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


class PostgresStore(SQLCore):
    """Implements :class:`runed.store.base.Store` over one PostgreSQL database (the logic is :class:`SQLCore`'s)."""

    unique_violation = pgerrors.UniqueViolation

    def __init__(
        self,
        url: str,
        *,
        changelog_keep: int = 100_000,
        audit_keep: int = 100_000,
        notify: bool = True,
        pool_size: int = 4,
    ) -> None:
        self.url = url
        self.changelog_keep = changelog_keep
        self.audit_keep = audit_keep
        self._writes_since_prune = 0
        self._tx = _Tx()
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
                apply_migrations(conn)
        except psycopg.Error as e:
            raise StoreError(f"cannot open database {redact_url(url)}: {e}") from None
        self._pool = Pool(url, pool_size)
        self.notifier: PgNotifier | None = PgNotifier(url) if notify else None
        # One worker per pooled connection: every call is a round trip, kept off the event loop.
        self.offload = Offload(pool_size, inline=False)

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

    def _lock_writes(self) -> None:
        """Take the revision row lock for the current transaction (once); it is held until commit."""
        conn = self._tx.conn
        assert conn is not None, "writes run inside transaction()"
        if not self._tx.locked:
            conn.execute("SELECT value FROM revision WHERE id = 1 FOR UPDATE")
            self._tx.locked = True

    def _log_change(self, kind: str, namespace: str, name: str, op: str, data: str | None) -> int:
        self._lock_writes()
        conn = self._tx.conn
        assert conn is not None
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

    def _fetchall(self, sql: str, args: Sequence[Any] = ()) -> Sequence[Sequence[Any]]:
        with self._conn() as conn:
            return conn.execute(_dialect(sql), args).fetchall()

    def _execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        conn = self._tx.conn
        assert conn is not None, "writes run inside transaction()"
        conn.execute(_dialect(sql), args)

    @contextlib.contextmanager
    def _savepoint(self) -> Iterator[None]:
        """A refused index key leaves the outer transaction usable."""
        conn = self._tx.conn
        assert conn is not None, "writes run inside transaction()"
        with conn.transaction():
            yield

    @contextlib.contextmanager
    def _audit_scope(self) -> Iterator[None]:
        """An audit row needs no revision: one autocommit insert, not a transaction under the write lock."""
        if self._tx.conn is not None:
            yield
            return
        with self._pool.connection() as conn:
            self._tx.conn = conn
            try:
                yield
            finally:
                self._tx.conn = None

    def _current_revision(self) -> int:
        row = self._fetchone("SELECT value FROM revision WHERE id = 1")
        return int(row[0]) if row else 0

    def close(self) -> None:
        if self.notifier is not None:
            self.notifier.close()
            self.notifier = None
        self.offload.close()
        self._pool.close()
