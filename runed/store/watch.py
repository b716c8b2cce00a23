"""Generic watch over store kinds: snapshot or resume from a revision, in order, never dropping silently.

Contract for every Watch RPC built on :func:`watch`:

* ``since_revision == 0``: first the current objects as ADDED events (carrying the revision the
  snapshot was taken at), then every later change.
* ``since_revision > 0``: every change after that revision, in revision order.
* A watcher that cannot keep up (more than ``queue_size`` undelivered events) or that asks for a
  revision older than the retained change log gets FAILED_PRECONDITION telling it to re-list (or
  to resume from the last revision it received, which is in the message). Nothing is ever dropped
  without that error.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from runed.core import errors
from runed.store.base import ADDED, DELETED, MODIFIED, Record, Store

__all__ = ["ADDED", "DELETED", "MODIFIED", "Event", "watch"]

DEFAULT_QUEUE_SIZE = 10_000


@dataclass(frozen=True)
class Event:
    """One change as a watcher sees it; ``data`` is the object after the change (before, for DELETED)."""

    op: str
    revision: int
    kind: str
    namespace: str
    name: str
    data: dict[str, Any]


class _Buffer:
    """Events between the store reader and the stream writer, bounded: overflow is an error."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: collections.deque[Event] = collections.deque()
        self.error: BaseException | None = None
        self.ready = asyncio.Event()

    def push(self, ev: Event) -> bool:
        if len(self.items) >= self.limit:
            return False
        self.items.append(ev)
        self.ready.set()
        return True

    def fail(self, exc: BaseException) -> None:
        self.error = exc
        self.ready.set()

    async def get(self) -> Event:
        while not self.items:
            if self.error is not None:
                raise self.error
            self.ready.clear()
            await self.ready.wait()
        return self.items.popleft()


async def _pump(store: Store, kinds: Sequence[str], namespace: str | None, since: int, buf: _Buffer) -> None:
    """Copy matching changes into the buffer; errors are delivered after everything before them."""
    try:
        async for ch in store.watch(kinds, since):
            if namespace is not None and ch.namespace != namespace:
                continue
            if not buf.push(Event(ch.op, ch.revision, ch.kind, ch.namespace, ch.name, ch.data or {})):
                buf.fail(
                    errors.FailedPrecondition(
                        f"watcher too slow: more than {buf.limit} events were pending; "
                        f"resume from the last revision received or list again",
                        reason="WATCH_TOO_SLOW",
                    )
                )
                return
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        buf.fail(exc)


async def _snapshot(store: Store, kind: str, namespace: str | None, page: int = 500) -> AsyncIterator[Record]:
    """Every object of a kind, a page per unit of store work (off the event loop; no long read)."""
    after: tuple[str, str] | None = None
    while True:
        res = await store.run(store.list, kind, namespace, after=after, limit=page)
        for rec in res.items:
            yield rec
        if not res.next_cursor or not res.items:
            return
        after = (res.items[-1].namespace, res.items[-1].name)


async def watch(
    store: Store,
    kinds: Sequence[str],
    *,
    namespace: str | None,
    since_revision: int = 0,
    snapshot_kinds: Sequence[str] | None = None,
    queue_size: int = DEFAULT_QUEUE_SIZE,
) -> AsyncIterator[Event]:
    """Events for ``kinds`` in ``namespace`` (None = all namespaces); see the module docstring.

    ``snapshot_kinds`` (default: all of ``kinds``) are the kinds listed as ADDED when starting
    without a revision; other kinds only contribute live changes (e.g. status records).
    """
    seen: dict[tuple[str, str, str], int] = {}
    if since_revision < 0:
        raise errors.invalid(("since_revision", "must not be negative"))
    if since_revision:
        oldest = await store.run(store.oldest_revision)
        if oldest and since_revision + 1 < oldest:
            raise errors.revision_compacted(since_revision, oldest, "list again and watch from the list's revision")
        start = since_revision
    else:
        start = await store.run(store.current_revision)
        for kind in kinds if snapshot_kinds is None else snapshot_kinds:
            async for rec in _snapshot(store, kind, namespace):
                # The list may already show changes made after ``start``: remember their
                # revisions so the live phase does not replay them as older states.
                if rec.revision > start:
                    seen[(kind, rec.namespace, rec.name)] = rec.revision
                yield Event(ADDED, start, kind, rec.namespace, rec.name, rec.data)
    buf = _Buffer(queue_size)
    task = asyncio.create_task(_pump(store, kinds, namespace, start, buf))
    try:
        while True:
            item = await buf.get()
            if seen and item.revision <= seen.get((item.kind, item.namespace, item.name), 0):
                continue
            yield item
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
