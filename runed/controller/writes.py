"""The controller's record writes, queued during a pass and committed together off the event loop.

Why: a pass saves many records at once (a cast of a thousand instances, their statuses, the
operations it advances). They go to the store in one transaction (one commit, one fsync) once the
pass yields, and as one unit of store work (:meth:`Store.run`): on PostgreSQL the commit is a network
round trip, and a write may wait behind another host's lock, so it must not hold the event loop
(probes, exits, stops and the scheduler share it). SQLite runs the unit inline, as before, unless it
is long (:data:`LONG_COMMIT`): then it runs beside the loop too (:meth:`Store.run_long`).

A write is a record's new data, None (delete it) or a mutation (read-modify-write in the commit,
like :meth:`Store.update`). Later writes to one record replace or extend earlier ones, so the commit
writes each record once. Commits run one at a time, in order; a failed one stays queued (newer
writes win) and the next commit retries it.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable, Collection
from typing import Any

from runed.store.base import Store

log = logging.getLogger("runed.controller")

Data = dict[str, Any]
Mutate = Callable[[Data | None], Data | None]
Write = Data | Mutate | None
RecordKey = tuple[str, str, str]

# A commit of this many writes or more runs beside the event loop on every store (Store.run_long):
# a deletion of a thousand instances commits hundreds of record deletions at a time while the loop
# finishes the next stops.
LONG_COMMIT = 100


def _then(first: Mutate, second: Mutate) -> Mutate:
    """Two mutations of one record as one (None from either: that one changes nothing)."""

    def both(cur: Data | None) -> Data | None:
        mid = first(copy.deepcopy(cur))
        out = second(copy.deepcopy(mid if mid is not None else cur))
        return out if out is not None else mid

    return both


class _Changed:
    """A mutation that tells whether it changed its record (``wrote``)."""

    __slots__ = ("mutate", "wrote")

    def __init__(self, mutate: Mutate) -> None:
        self.mutate = mutate
        self.wrote = False

    def __call__(self, cur: Data | None) -> Data | None:
        out = self.mutate(cur)
        self.wrote = out is not None
        return out


def _merge(pending: dict[RecordKey, Write], key: RecordKey, write: Write) -> None:
    """Queue ``write`` after what ``pending`` holds for its record (kept in the order of the latest)."""
    if callable(write) and key in pending:
        prev = pending[key]
        if prev is None:
            return  # deleted: a mutation of nothing changes nothing
        if callable(prev):
            write = _then(prev, write)
        else:
            out = write(copy.deepcopy(prev))
            if out is None:
                return
            write = out
    pending.pop(key, None)
    pending[key] = write


class Writes:
    """Record writes not yet in the store, by (kind, namespace, name), in the order of the latest.

    ``echo_kinds``: kinds whose written revisions are kept until the writer's watch brings them
    back (:meth:`echo`).
    """

    def __init__(self, store: Store, echo_kinds: Collection[str] = ()) -> None:
        self.store = store
        self.echo_kinds = frozenset(echo_kinds)
        # Record (of an echo kind) -> the revision of this writer's latest write of it.
        self._echoes: dict[RecordKey, int] = {}
        self._pending: dict[RecordKey, Write] = {}
        # The writes of the commit in flight: not in the store yet either.
        self._committing: dict[RecordKey, Write] = {}
        self._scheduled = False
        # The flush scheduled for what is queued, until it starts (one that took it all makes it moot).
        self._soon: asyncio.Handle | None = None
        # A commit held back for more of its kind to join it (:meth:`delete_all` with ``linger``).
        self._later: asyncio.TimerHandle | None = None
        self._lock: asyncio.Lock | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._pending) + len(self._committing)

    def __contains__(self, key: RecordKey) -> bool:
        """Whether a write of that record is queued or being committed (not in the store yet)."""
        return key in self._pending or key in self._committing

    def put(self, kind: str, namespace: str, name: str, data: Data) -> None:
        self._queue((kind, namespace, name), data)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self._queue((kind, namespace, name), None)

    def delete_all(self, keys: list[RecordKey], *, linger: float = 0.0) -> None:
        """:meth:`delete` each of ``keys``, in their order.

        ``linger``: seconds the commit may wait for more deletions like these (a deletion's ends,
        which trickle in one by one before the rest come at once), unless another write wants it
        sooner: each commit is a transaction and a wake-up of every watcher in every role, and a
        deletion of a thousand made ten of them for a record or two each (bench/README.md)."""
        for key in keys:
            _merge(self._pending, key, None)
        if not keys:
            return
        if linger > 0 and not self._scheduled:
            if self._later is not None:
                return  # the commit held back takes these too
            try:
                self._later = asyncio.get_running_loop().call_later(linger, self._queue_done)
                return
            except RuntimeError:
                pass  # no event loop: written at once
        self._queue_done()

    def update(self, kind: str, namespace: str, name: str, mutate: Mutate) -> None:
        """Read-modify-write in the commit (``mutate`` as for :meth:`Store.update`)."""
        self._queue((kind, namespace, name), mutate)

    def _queue(self, key: RecordKey, write: Write) -> None:
        _merge(self._pending, key, write)
        self._queue_done()

    def _queue_done(self) -> None:
        """Have what is queued committed once the loop is free (at once without one)."""
        self._cancel_later()
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.commit(self._take())
            return
        self._scheduled = True
        self._soon = loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._soon = None
        task = asyncio.get_running_loop().create_task(self.flush())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _take(self) -> dict[RecordKey, Write]:
        self._scheduled = False
        self._cancel_later()
        if self._soon is not None:
            # Its flush would take what is queued after this one: a deletion's last ends, held back
            # for the pass they rush (``StopGroup``), were committed on their own, 3-5 ms before it.
            self._soon.cancel()
            self._soon = None
        pending, self._pending = self._pending, {}
        return pending

    def _cancel_later(self) -> None:
        """No commit held back any more: one comes sooner (or is under way) with everything queued."""
        if self._later is not None:
            self._later.cancel()
            self._later = None

    def commit(self, pending: dict[RecordKey, Write]) -> None:
        """Write ``pending`` in one transaction (blocking: one unit of store work)."""
        if not pending:
            return
        with self.store.transaction():
            # Deletions in a row go together (a deletion's instances): the order of the writes is kept.
            deletions: list[RecordKey] = []
            for key, write in pending.items():
                if write is None:
                    deletions.append(key)
                    continue
                if deletions:
                    self.store.delete_many(deletions)
                    deletions = []
                if callable(write):
                    if key[0] not in self.echo_kinds:
                        self.store.update(*key, write)
                        continue
                    changed = _Changed(write)
                    rec = self.store.update(*key, changed)
                    if rec is not None and changed.wrote:
                        self._echoes[key] = rec.revision
                else:
                    rec = self.store.put(*key, write)
                    if key[0] in self.echo_kinds:
                        self._echoes[key] = rec.revision
            if deletions:
                self.store.delete_many(deletions)

    def echo(self, key: RecordKey, revision: int) -> bool:
        """Whether the change of ``key`` at ``revision`` is this writer's own write coming back
        through its watch (each is told once)."""
        mine = self._echoes.get(key)
        if mine is None or revision < mine:
            return False
        del self._echoes[key]
        return revision == mine

    def drop_echoes(self, upto: int) -> None:
        """Forget this writer's revisions up to ``upto``: a watch resumed from there never brings them back."""
        for key, revision in list(self._echoes.items()):
            if revision <= upto:
                self._echoes.pop(key, None)

    async def flush(self) -> None:
        """Commit what is queued, off the event loop (a short commit inline on SQLite). On failure
        (e.g. a full disk, an unreachable database) it stays queued for the next flush; the caches
        already say it."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            pending = self._take()
            if not pending:
                return
            run = self.store.run_long if len(pending) >= LONG_COMMIT else self.store.run
            self._committing = pending
            try:
                await run(self.commit, pending)
            except Exception as e:
                # Nothing of it was written: a revision it took may be another writer's next.
                for key in pending:
                    self._echoes.pop(key, None)
                # Once per pass while it lasts: a warning, not a traceback each time.
                log.warning("cannot write %d records (%s); retrying on the next pass", len(pending), e)
                for key, write in self._pending.items():
                    _merge(pending, key, write)
                self._pending = pending
            finally:
                self._committing = {}
