"""What every SQL store does the same way, whatever the database: one rule in one place.

Records and changes, the revision and change-log semantics (get_at, changes_since, oldest, prune
policy, watch), the create/put/update/delete flow, paging, audit and meta rows are written once
here. A backend (``runed.store.sqlite``, ``runed.store.postgres``) adds only its dialect and
connection handling: how a statement reaches its connection (:meth:`SQLCore._fetchall`,
:meth:`SQLCore._execute`), transactions, how a write takes the write lock and the next revision
(:meth:`SQLCore._log_change`), and which error a refused unique index raises.

Statements here use ``?`` placeholders and SQL both databases accept; the PostgreSQL backend
rewrites the placeholders to its own.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, ParamSpec, TypeVar

import orjson

from runed.core import errors
from runed.store.base import ADDED, DELETED, MODIFIED, AuditEntry, Change, ListResult, Record
from runed.store.offload import Offload

log = logging.getLogger("runed.store")

P = ParamSpec("P")
T = TypeVar("T")

# The longest a watcher sleeps between two looks at the change log when no wake-up arrives.
SAFETY_POLL_SECONDS = 1.0
# Committed writes between two prunes of the change log.
PRUNE_EVERY = 1000
# Changes read per look at the change log by a watcher.
WATCH_BATCH = 1000

_OBJECT_COLUMNS = "namespace, name, data, revision, created_revision"
_AUDIT_COLUMNS = "ts, subject, method, resource, verb, namespace, name, outcome, code, request_id, peer, detail"


def dumps(data: dict[str, Any]) -> str:
    return orjson.dumps(data).decode()


def loads(raw: str | None) -> dict[str, Any] | None:
    return None if raw is None else orjson.loads(raw)  # type: ignore[no-any-return]


def _record(kind: str, row: Sequence[Any]) -> Record:
    return Record(kind, row[0], row[1], orjson.loads(row[2]), int(row[3]), int(row[4]))


def _audit_entry(r: Sequence[Any]) -> AuditEntry:
    return AuditEntry(
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


def _prune_quietly(prune: Callable[[], None], what: str) -> None:
    """Prune after a committed write: a failed prune (a full disk, a lost connection) must not turn
    the write into an error. The next prune catches up."""
    try:
        prune()
    except Exception as e:
        log.warning("cannot prune %s: %s", what, e)


# Keys per statement of :meth:`SQLCore.delete_many` (three parameters each, far below SQLite's limit).
DELETE_CHUNK = 300


class SQLCore:
    """Implements :class:`runed.store.base.Store` on top of a backend's few primitives (below)."""

    changelog_keep: int
    _writes_since_prune: int
    # Audit records kept (the newest); older ones are removed every PRUNE_EVERY audit writes.
    audit_keep: int = 100_000
    _audits_since_prune: int = 0
    offload: Offload

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """One unit of store work off the event loop, or inline: the backend's choice (:mod:`runed.store.offload`)."""
        return await self.offload(fn, *args, **kwargs)

    async def run_long(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """One long unit of store work, off the event loop on every backend (:meth:`Offload.long`)."""
        return await self.offload.long(fn, *args, **kwargs)

    # -- what a backend provides -----------------------------------------------------------------
    def _fetchall(self, sql: str, args: Sequence[Any] = ()) -> Sequence[Sequence[Any]]:
        """Rows of one statement: in the thread's transaction if one is open, else on its own."""
        raise NotImplementedError

    def _execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        """One statement inside the current write transaction (after :meth:`_lock_writes`)."""
        raise NotImplementedError

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """Group writes atomically; nested calls join the outer transaction."""
        raise NotImplementedError

    def _lock_writes(self) -> None:
        """Serialize the current transaction with every other writer (held until commit)."""
        raise NotImplementedError

    def _log_change(self, kind: str, namespace: str, name: str, op: str, data: str | None) -> int:
        """Append one change inside the current transaction; returns its revision, the write's."""
        raise NotImplementedError

    def _log_deleting(self, keys: Sequence[tuple[str, str, str]]) -> bool:
        """Append a DELETED change for each of ``keys`` that exists (the record as stored), in their
        order, before :meth:`delete_many` deletes them, if the database can copy them itself: True.
        False (the default): :meth:`delete_many` logs what its deletions return, one change at a time."""
        return False

    def _current_revision(self) -> int:
        """The last committed revision (inside a write transaction: including its own)."""
        raise NotImplementedError

    def _savepoint(self) -> contextlib.AbstractContextManager[None]:
        """Scope of one statement whose failure must leave the transaction usable."""
        return contextlib.nullcontext()

    def _audit_scope(self) -> contextlib.AbstractContextManager[None]:
        """Where an audit row is written (it logs no change and needs no revision)."""
        return self.transaction()

    unique_violation: type[Exception] = Exception
    notifier: Any = None

    def _fetchone(self, sql: str, args: Sequence[Any] = ()) -> Sequence[Any] | None:
        rows = self._fetchall(sql, args)
        return rows[0] if rows else None

    # -- revisions and the change log ------------------------------------------------------------
    def current_revision(self) -> int:
        return self._current_revision()

    def oldest_revision(self) -> int:
        """The oldest revision still in the change log (0 when nothing was ever pruned)."""
        row = self._fetchone("SELECT MIN(revision) FROM changes")
        pruned = self._fetchone("SELECT value FROM meta WHERE key = 'changelog_pruned_to'")
        if pruned is None:
            return 0
        return int(row[0]) if row and row[0] is not None else int(pruned[0]) + 1

    def changes_since(
        self,
        revision: int,
        kinds: Sequence[str] | None = None,
        limit: int = WATCH_BATCH,
        *,
        deletion_data: bool = True,
    ) -> builtins.list[Change]:
        # Without deletions' data, their records are not read at all (both databases evaluate a CASE
        # lazily): a deletion of 1,000 instances came back to the controller as four reads of 3-24 ms
        # each, 40 ms of CPU in all (bench/README.md, "the controller's watch reads no deleted record").
        data = "data" if deletion_data else f"CASE WHEN op = '{DELETED}' THEN NULL ELSE data END"
        sql = f"SELECT revision, kind, namespace, name, op, {data}, ts FROM changes WHERE revision > ?"
        args: list[Any] = [revision]
        if kinds:
            sql += f" AND kind IN ({','.join('?' * len(kinds))})"
            args.extend(kinds)
        sql += " ORDER BY revision LIMIT ?"
        args.append(limit)
        rows = self._fetchall(sql, args)
        return [Change.encoded(int(r[0]), r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows]

    def changed_since(self, revision: int, kinds: Sequence[str]) -> bool:
        # Revisions are contiguous in the log (each is the log's own sequence, taken in its writer's
        # transaction), so a log that starts after revision + 1 was pruned past it.
        row = self._fetchone(
            "SELECT (SELECT MIN(revision) FROM changes), EXISTS (SELECT 1 FROM changes WHERE revision > ?"
            f" AND kind IN ({','.join('?' * len(kinds))}))",
            [revision, *kinds],
        )
        if row is None or row[0] is None:
            return revision < self._current_revision()
        return int(row[0]) > revision + 1 or bool(row[1])

    def prune_changelog(self) -> None:
        """Keep the last ``changelog_keep`` changes; remember where the log now starts."""
        with self.transaction():
            self._lock_writes()
            cutoff = self._current_revision() - self.changelog_keep
            if cutoff <= 0:
                return
            self._execute("DELETE FROM changes WHERE revision <= ?", (cutoff,))
            self._meta_upsert("changelog_pruned_to", str(cutoff))

    def _after_commit(self) -> None:
        """After each commit that logged a change: wake watchers, prune every PRUNE_EVERY writes."""
        if self.notifier is not None:
            self.notifier.notify()
        self._writes_since_prune += 1
        if self._writes_since_prune >= PRUNE_EVERY:
            self._writes_since_prune = 0
            _prune_quietly(self.prune_changelog, "the change log")

    async def watch(self, kinds: Sequence[str], since: int, *, deletion_data: bool = True) -> AsyncIterator[Change]:
        """Every change to ``kinds`` after revision ``since``, in order, forever.

        Raises FailedPrecondition when ``since`` is older than the retained change log: the
        caller must re-list rather than silently miss changes. While the database is unavailable
        (restarting, down) the watch waits and resumes from the last revision it delivered.
        """
        rev = since
        while True:
            # Armed before the read: a commit's wake-up during the read ends the wait below at once.
            armed = self.notifier.arm() if self.notifier is not None else None
            try:
                oldest = await self.run(self.oldest_revision)
                if oldest and rev + 1 < oldest:
                    raise errors.revision_compacted(rev, oldest, "re-list and watch again")
                batch = await self.run(self.changes_since, rev, kinds, deletion_data=deletion_data)
            except errors.StoreUnavailable:
                await asyncio.sleep(errors.STORE_RETRY_SECONDS)
                continue
            for change in batch:
                rev = change.revision
                yield change
            if batch:
                # Drain anything committed meanwhile before sleeping.
                continue
            if self.notifier is not None:
                # Wake-ups are hints: the change log is read again after the wait either way.
                await self.notifier.wait(SAFETY_POLL_SECONDS, armed)
            else:
                await asyncio.sleep(0.05)

    # -- reads ----------------------------------------------------------------------------------
    def get(self, kind: str, namespace: str, name: str) -> Record | None:
        row = self._fetchone(
            f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE kind = ? AND namespace = ? AND name = ?",
            (kind, namespace, name),
        )
        return None if row is None else _record(kind, row)

    def get_at(self, kind: str, namespace: str, name: str, revision: int) -> Record | None:
        """The object as it was at ``revision`` (None when it did not exist then), from the change log.

        The current object answers when it was last written at or before ``revision``; otherwise the
        key's last change up to ``revision`` does. If pruning removed that change, the current object
        is the best that is known and is returned (when it existed by then).
        """
        current = self.get(kind, namespace, name)
        if current is not None and current.revision <= revision:
            return current
        # The (kind, revision) index walked backwards from ``revision``: a short walk for the
        # recent revisions watchers resume from.
        row = self._fetchone(
            "SELECT revision, op, data FROM changes WHERE kind = ? AND revision <= ? AND namespace = ? "
            "AND name = ? ORDER BY revision DESC LIMIT 1",
            (kind, revision, namespace, name),
        )
        if row is None:
            existed = current is not None and current.created_revision <= revision
            return current if existed else None
        if row[1] == DELETED or row[2] is None:
            return None
        created = current.created_revision if current is not None and current.created_revision <= row[0] else 0
        return Record(kind, namespace, name, orjson.loads(row[2]), int(row[0]), created)

    def get_by_index(self, kind: str, index_key: str) -> Record | None:
        row = self._fetchone(
            f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE kind = ? AND index_key = ?", (kind, index_key)
        )
        return None if row is None else _record(kind, row)

    def list(
        self,
        kind: str,
        namespace: str | None = None,
        *,
        after: tuple[str, str] | None = None,
        limit: int | None = None,
        known: Callable[[str, str, int], Record | None] | None = None,
    ) -> ListResult:
        """Objects ordered by (namespace, name); ``after`` continues a previous page (see Store.list)."""
        # The revision first: rows read after it may be newer (a watcher sees them again), never older.
        rev = self._current_revision()
        if after is not None and namespace is not None and after[0] > namespace:
            return ListResult(revision=rev)
        sql = "FROM objects WHERE kind = ?"
        args: list[Any] = [kind]
        if namespace is not None:
            sql += " AND namespace = ?"
            args.append(namespace)
            if after is not None and after[0] == namespace:
                # Within one namespace compare the name alone: with "namespace = ?" plus a row-value
                # comparison SQLite picks the (kind, name) index and scans the whole kind per page.
                sql += " AND name > ?"
                args.append(after[1])
        elif after is not None:
            sql += " AND (namespace, name) > (?, ?)"
            args.extend(after)
        sql += " ORDER BY namespace, name"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit + 1)
        items: list[Record] | None = None
        more = False
        if known is not None:
            # Reading and decoding the data is most of a page's read: when the caller holds every row
            # at its revision, the keys and revisions are all there is to read (101 µs instead of 136
            # for 100 instances; bench/README.md "ListInstances: a page in its wire form").
            keys = self._fetchall(f"SELECT namespace, name, revision {sql}", args)
            more = limit is not None and len(keys) > limit
            held = [known(r[0], r[1], int(r[2])) for r in (keys[:limit] if more else keys)]
            if all(held):
                items = [r for r in held if r is not None]
        if items is None:
            rows = self._fetchall(f"SELECT {_OBJECT_COLUMNS} {sql}", args)
            more = limit is not None and len(rows) > limit
            if more:
                rows = rows[:limit]
            if known is None:
                items = [_record(kind, r) for r in rows]
            else:
                # Rows held at their revision skip the JSON decoding.
                items = [known(r[0], r[1], int(r[3])) or _record(kind, r) for r in rows]
        cursor = f"{items[-1].namespace}/{items[-1].name}" if more and items else ""
        return ListResult(items=items, next_cursor=cursor, revision=rev)

    def count(self, kind: str, namespace: str | None = None) -> int:
        sql = "SELECT COUNT(*) FROM objects WHERE kind = ?"
        args: list[Any] = [kind]
        if namespace is not None:
            sql += " AND namespace = ?"
            args.append(namespace)
        row = self._fetchone(sql, args)
        return int(row[0]) if row else 0

    # -- writes: each one transaction under the write lock, so read-modify-write never loses an update
    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        with self.transaction():
            self._lock_writes()
            yield

    def _head(self, kind: str, namespace: str, name: str) -> tuple[int, int] | None:
        """(revision, created revision) of an object, without its data (a write replaces it whole)."""
        row = self._fetchone(
            "SELECT revision, created_revision FROM objects WHERE kind = ? AND namespace = ? AND name = ?",
            (kind, namespace, name),
        )
        return None if row is None else (int(row[0]), int(row[1]))

    def create(
        self, kind: str, namespace: str, name: str, data: dict[str, Any], *, index_key: str | None = None
    ) -> Record:
        with self._writing():
            if self._head(kind, namespace, name) is not None:
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
        with self._writing():
            head = self._head(kind, namespace, name)
            if expect_revision is not None:
                actual = head[0] if head else 0
                if actual != expect_revision:
                    raise errors.Conflict(
                        f'{kind} "{name}" was modified concurrently (revision {actual}, expected {expect_revision})'
                    )
            return self._write(kind, namespace, name, data, head[1] if head else None, index_key)

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
        the new data, or None to leave the object as it is. Safe across processes and hosts (one
        transaction under the write lock), so two roles may update one object without losing changes."""
        with self._writing():
            existing = self.get(kind, namespace, name)
            new = mutate(orjson.loads(orjson.dumps(existing.data)) if existing else None)
            if new is None:
                return existing
            return self._write(kind, namespace, name, new, existing.created_revision if existing else None, index_key)

    def delete(self, kind: str, namespace: str, name: str, *, expect_revision: int | None = None) -> Record | None:
        with self._writing():
            row = self._fetchone(
                "SELECT data, revision, created_revision FROM objects WHERE kind = ? AND namespace = ? AND name = ?",
                (kind, namespace, name),
            )
            if row is None:
                return None
            if expect_revision is not None and int(row[1]) != expect_revision:
                raise errors.Conflict(f'{kind} "{name}" was modified concurrently')
            # The log keeps the object as it was, as stored: no decoding and encoding again.
            rev = self._log_change(kind, namespace, name, DELETED, row[0])
            self._execute("DELETE FROM objects WHERE kind = ? AND namespace = ? AND name = ?", (kind, namespace, name))
            return Record(kind, namespace, name, orjson.loads(row[0]), rev, int(row[2]))

    def delete_many(self, keys: Sequence[tuple[str, str, str]]) -> None:
        """Delete each of ``keys`` (kind, namespace, name) that exists, in their order, in one transaction.

        As :meth:`delete` one by one, in one ``DELETE ... RETURNING`` (what the change log keeps) per
        :data:`DELETE_CHUNK` names of one kind and namespace, or a ``DELETE`` after the database
        copied the log's rows itself (:meth:`_log_deleting`): a deletion of a thousand instances
        deletes their records at once (three statements each were most of its commit; a ``SELECT``
        before the ``DELETE`` made 1,000 instance and 1,000 action records 36 ms against 31). The names
        go in ``name IN (...)`` under equal kind and namespace, which both databases look up in the
        primary key; SQLite scans the whole table for a row value ``(kind, namespace, name) IN
        (VALUES ...)`` (a deletion of 1,000 instances and their actions: 135 ms against 55 ms).
        """
        groups: dict[tuple[str, str], list[str]] = {}
        for kind, namespace, name in keys:
            groups.setdefault((kind, namespace), []).append(name)
        with self._writing():
            logged = self._log_deleting(keys)
            found: dict[tuple[str, str, str], str] = {}
            for (kind, namespace), names in groups.items():
                for i in range(0, len(names), DELETE_CHUNK):
                    chunk = names[i : i + DELETE_CHUNK]
                    where = f"WHERE kind = ? AND namespace = ? AND name IN ({', '.join(['?'] * len(chunk))})"
                    if logged:
                        self._execute(f"DELETE FROM objects {where}", [kind, namespace, *chunk])
                        continue
                    rows = self._fetchall(
                        f"DELETE FROM objects {where} RETURNING name, data", [kind, namespace, *chunk]
                    )
                    found.update(((kind, namespace, str(r[0])), r[1]) for r in rows)
            if not logged:
                for key in keys:
                    data = found.pop(key, None)  # a key named twice is logged once
                    if data is not None:
                        self._log_change(*key, DELETED, data)

    def _write(
        self,
        kind: str,
        namespace: str,
        name: str,
        data: dict[str, Any],
        created: int | None,
        index_key: str | None,
    ) -> Record:
        """Write ``data`` as the object; ``created``: the revision that created it (None: it is new)."""
        raw = dumps(data)
        rev = self._log_change(kind, namespace, name, ADDED if created is None else MODIFIED, raw)
        created = rev if created is None else created
        try:
            with self._savepoint():
                self._execute(
                    "INSERT INTO objects (kind, namespace, name, data, revision, created_revision, index_key) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (kind, namespace, name) DO UPDATE SET "
                    "data = excluded.data, revision = excluded.revision, "
                    "index_key = COALESCE(excluded.index_key, objects.index_key)",
                    (kind, namespace, name, raw, rev, created, index_key),
                )
        except self.unique_violation:
            raise errors.AlreadyExists(f"{kind} index key already in use") from None
        return Record(kind, namespace, name, data, rev, created)

    # -- audit and meta -------------------------------------------------------------------------
    def audit(self, entry: AuditEntry) -> None:
        with self._audit_scope():
            self._execute(
                f"INSERT INTO audit ({_AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        self._audited()

    def prune_audit(self) -> None:
        """Keep the newest ``audit_keep`` audit records: the table must not grow for as long as runed runs."""
        with self._audit_scope():
            self._execute("DELETE FROM audit WHERE id <= (SELECT MAX(id) FROM audit) - ?", (self.audit_keep,))

    def _audited(self) -> None:
        """After each audit write: prune every PRUNE_EVERY of them (per process; any process may)."""
        self._audits_since_prune += 1
        if self._audits_since_prune >= PRUNE_EVERY:
            self._audits_since_prune = 0
            _prune_quietly(self.prune_audit, "the audit records")

    def list_audit(
        self, *, since_id: int = 0, limit: int = 100, subject: str | None = None
    ) -> builtins.list[AuditEntry]:
        sql = f"SELECT id, {_AUDIT_COLUMNS} FROM audit WHERE id > ?"
        args: list[Any] = [since_id]
        if subject:
            sql += " AND subject = ?"
            args.append(subject)
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        return [_audit_entry(r) for r in self._fetchall(sql, args)]

    def meta_get(self, key: str) -> str | None:
        row = self._fetchone("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else str(row[0])

    def meta_set(self, key: str, value: str) -> None:
        # Under the write lock too: a transaction never takes the meta row before the revision row.
        with self._writing():
            self._meta_upsert(key, value)

    def _meta_upsert(self, key: str, value: str) -> None:
        self._execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )
