"""The change log: each committed write gets the next global revision; watchers read it in order; pruned to a size."""

from __future__ import annotations

import builtins
import logging
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from runed.core import errors
from runed.store.base import Change
from runed.store.sqlite.connection import Database

log = logging.getLogger("runed.store")

SAFETY_POLL_SECONDS = 1.0
# Committed writes between two prunes of the change log.
_PRUNE_EVERY = 1000


def _loads(raw: str | None) -> dict[str, Any] | None:
    return None if raw is None else orjson.loads(raw)  # type: ignore[no-any-return]


class ChangeLog(Database):
    """A :class:`Database` whose writes append to the ``changes`` table (its AUTOINCREMENT id is the revision)."""

    def __init__(self, path: Path, *, changelog_keep: int = 100_000, notify: bool = True) -> None:
        self.changelog_keep = changelog_keep
        self._writes_since_prune = 0
        super().__init__(path, notify=notify)

    def _after_commit(self) -> None:
        super()._after_commit()
        self._writes_since_prune += 1
        if self._writes_since_prune >= _PRUNE_EVERY:
            self._writes_since_prune = 0
            try:
                self.prune_changelog()
            except errors.StorageFull as e:
                # The write that got here is committed: a full disk must not turn it into an error.
                # The next prune (after as many writes) catches up.
                log.warning("cannot prune the change log: %s", e)

    def _log_change(self, kind: str, namespace: str, name: str, op: str, data: str | None) -> int:
        """Append one change inside the current transaction; its id is the write's revision."""
        cur = self.conn.execute(
            "INSERT INTO changes (kind, namespace, name, op, data, ts) VALUES (?, ?, ?, ?, ?, ?)",
            (kind, namespace, name, op, data, time.time()),
        )
        self._pending_notify = True
        assert cur.lastrowid is not None
        return cur.lastrowid

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
