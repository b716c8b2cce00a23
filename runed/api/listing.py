"""What every List/Watch handler reads off its request (the compiled selector and the paging query key),
the protos its pages are made of, built and encoded once per stored revision, whole pages kept while
nothing they were read from changes, and a page's response made of those encodings."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message

from rune.api import common_pb2
from runed.model import selectors
from runed.pipeline import encoded
from runed.pipeline.encoded import Encoded
from runed.store import paging
from runed.store.base import ADDED, DELETED, MODIFIED, Record, Store

# A store change's op as every Watch RPC's event type.
EVENT_TYPES = {
    ADDED: common_pb2.EVENT_TYPE_ADDED,
    MODIFIED: common_pb2.EVENT_TYPE_MODIFIED,
    DELETED: common_pb2.EVENT_TYPE_DELETED,
}

M = TypeVar("M", bound=Message)


def selector(req: Any) -> selectors.Selector:
    """The request's label and field selectors, map and expression forms together (checked by its validator)."""
    return selectors.compile_selector(
        label_map=req.label_selector,
        label_expr=req.label_selector_expr,
        field_map=req.field_selector,
        field_expr=req.field_selector_expr,
    )


def query_key(req: Any) -> str:
    """The request without its paging fields: a page token is bound to it, so it cannot resume another query."""
    q = type(req)()
    q.CopyFrom(req)
    for f in ("paging", "page_size", "page_token"):
        q.ClearField(f)
    return f"{type(req).__name__}:{q.SerializeToString(deterministic=True).hex()}"


def page_response(cls: type[M], page: paging.Page[bytes], req: paging.PageRequest, status: Any) -> Encoded[M]:
    """A page of ``cls`` (a List response) in its wire form: the items kept encoded (see :class:`Built`),
    then the page token, the revision, ``status`` and the upstream paging fields."""
    build: Any = cls  # the fields are those of every List response, which Message's own signature cannot name
    rest = build(next_page_token=page.next_token, revision=page.revision, status=status)
    rest.paging.limit = req.size or len(page.items)
    rest.paging.offset = req.skip
    rest.paging.continuation_token = page.next_token
    return encoded.joined(cls, page.items, rest)


class Built(Generic[M]):
    """Protos built from a record and its (optional) companion record, kept per store by their revisions.

    Building a proto from its stored dict, and before that decoding the dict from its row, were
    most of a page of 100 services (bench/README.md "ListServices"), and successive pages and
    repeated lists are mostly the same revisions. A revision is never reused within a store, so an
    entry cannot go stale: a write makes a new key and the old one ages out (first in, first out, at
    most ``size`` per store). Each proto is kept with its encoding as an element of the list
    response's repeated field ``field``, so a page is its items' bytes joined (``encoded.joined``).
    The records (:meth:`Kept.known`, for :meth:`Store.list`) and protos are shared: callers never
    change them.
    """

    def __init__(self, build: Callable[[Record, Record | None], M], field: int, size: int = 4096) -> None:
        self._build = build
        self._field = field
        self._size = size
        self._stores: weakref.WeakKeyDictionary[Store, Kept[M]] = weakref.WeakKeyDictionary()
        # Pages may be read on the store's worker threads.
        self._lock = threading.Lock()

    def of(self, store: Store) -> Kept[M]:
        """What this store's revisions were built into (one lookup per call, not per record)."""
        return _of_store(
            self._stores, store, self._lock, lambda: Kept(self._build, self._field, self._size, self._lock)
        )


class Kept(Generic[M]):
    """One store's built protos, their encodings and their records, by revision."""

    def __init__(
        self, build: Callable[[Record, Record | None], M], field: int, size: int, lock: threading.Lock
    ) -> None:
        self._build = build
        self._field = field
        self._size = size
        self._lock = lock
        self._items: dict[tuple[str, str, int, int], tuple[M, bytes]] = {}
        self._records: dict[tuple[str, str, int], Record] = {}

    def _item(self, rec: Record, other: Record | None) -> tuple[M, bytes]:
        key = (rec.namespace, rec.name, rec.revision, other.revision if other is not None else 0)
        hit = self._items.get(key)
        if hit is not None:
            return hit
        proto = self._build(rec, other)
        built = (proto, encoded.framed(self._field, proto))
        with self._lock:
            _put(self._items, key, built, self._size)
            _put(self._records, key[:3], rec, self._size)
        return built

    def proto(self, rec: Record, other: Record | None = None) -> M:
        return self._item(rec, other)[0]

    def framed(self, rec: Record, other: Record | None = None) -> bytes:
        """The proto as one element of the list response's repeated field, encoded."""
        return self._item(rec, other)[1]

    def known(self, namespace: str, name: str, revision: int) -> Record | None:
        """The record held at (namespace, name, revision), if any: :meth:`Store.list` skips decoding it."""
        return self._records.get((namespace, name, revision))


@dataclass(frozen=True)
class _Held:
    page: paging.Page[bytes]
    revision: int


class _Shelf:
    """One store's kept pages, oldest first, and how many items they hold together."""

    def __init__(self) -> None:
        self.pages: dict[Hashable, _Held] = {}
        self.items = 0


class Pages:
    """Whole pages of a List call, kept per store and query while the kinds they were read from do not change.

    A client that lists the same page again (a CI script polling until its instances run, a
    monitoring scrape, a dashboard listing again after a reconnect) mostly asks for what it was just
    sent; reading the page's rows again was most of the call for a page of 100 instances
    (bench/README.md "API p99: pages kept").
    The store's revision (one read) says whether anything changed since; if something did, the
    change log says whether it was one of ``kinds`` (:meth:`Store.changed_since`). A page is kept
    with the revision read *before* its rows, so a write landing while it is read makes it stale,
    never wrong. The kept pages of a store hold at most ``items`` items together (their encodings
    are shared with :class:`Built`'s), the oldest page leaving first.
    """

    def __init__(self, kinds: tuple[str, ...], items: int = 8192) -> None:
        self._kinds = kinds
        self._budget = items
        self._stores: weakref.WeakKeyDictionary[Store, _Shelf] = weakref.WeakKeyDictionary()
        # Pages may be read on the store's worker threads.
        self._lock = threading.Lock()

    def page(self, store: Store, key: Hashable, read: Callable[[int], paging.Page[bytes]]) -> paging.Page[bytes]:
        """The page ``key`` of ``store``: the kept one while it still holds, else ``read(revision)``."""
        shelf = _of_store(self._stores, store, self._lock, _Shelf)
        now = store.current_revision()
        held = shelf.pages.get(key)
        # A revision below the kept one: not the store the page was read from (restored); read again.
        if held is not None and held.revision <= now:
            if held.revision == now or not store.changed_since(held.revision, self._kinds):
                if held.revision != now:
                    with self._lock:
                        if key in shelf.pages:
                            shelf.pages[key] = _Held(held.page, now)
                return paging.Page(held.page.items, held.page.next_token, now)
        page = read(now)
        with self._lock:
            old = shelf.pages.pop(key, None)
            if old is not None:
                shelf.items -= len(old.page.items)
            if len(page.items) <= self._budget:
                shelf.pages[key] = _Held(page, now)
                shelf.items += len(page.items)
            while shelf.items > self._budget:
                gone = shelf.pages.pop(next(iter(shelf.pages)))
                shelf.items -= len(gone.page.items)
        return page


K = TypeVar("K")
V = TypeVar("V")


def _of_store(
    stores: weakref.WeakKeyDictionary[Store, V], store: Store, lock: threading.Lock, make: Callable[[], V]
) -> V:
    """What is kept for ``store`` (made once, under ``lock``, the first time): one lookup per call."""
    held = stores.get(store)
    if held is None:
        with lock:
            held = stores.setdefault(store, make())
    return held


def _put(cache: dict[K, V], key: K, value: V, size: int) -> None:
    cache[key] = value
    if len(cache) > size:
        del cache[next(iter(cache))]
