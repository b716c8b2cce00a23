"""What every List/Watch handler reads off its request (the compiled selector and the paging query key),
and the protos its pages are made of, built once per stored revision."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message

from runed.model import selectors
from runed.store.base import Record, Store

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


class Built(Generic[M]):
    """Protos built from a record and its (optional) companion record, kept per store by their revisions.

    Building a proto from its stored dict, and before that decoding the dict from its row, were
    most of a page of 100 services (bench/README.md "ListServices"), and successive pages and
    repeated lists are mostly the same revisions. A revision is never reused within a store, so an
    entry cannot go stale: a write makes a new key and the old one ages out (first in, first out, at
    most ``size`` per store). The records (:meth:`known`, for :meth:`Store.list`) and protos are
    shared: callers copy them (a response constructor does) and never change them.
    """

    def __init__(self, build: Callable[[Record, Record | None], M], size: int = 4096) -> None:
        self._build = build
        self._size = size
        self._protos: _PerStore[tuple[str, str, int, int], M] = weakref.WeakKeyDictionary()
        self._records: _PerStore[tuple[str, str, int], Record] = weakref.WeakKeyDictionary()
        # Pages may be read on the store's worker threads.
        self._lock = threading.Lock()

    def get(self, store: Store, rec: Record, other: Record | None) -> M:
        key = (rec.namespace, rec.name, rec.revision, other.revision if other is not None else 0)
        protos = self._protos.get(store)
        if protos is not None:
            hit = protos.get(key)
            if hit is not None:
                return hit
        built = self._build(rec, other)
        with self._lock:
            _put(self._protos.setdefault(store, {}), key, built, self._size)
            _put(self._records.setdefault(store, {}), key[:3], rec, self._size)
        return built

    def known(self, store: Store) -> Callable[[str, str, int], Record | None]:
        """The records this cache holds for ``store``, by (namespace, name, revision)."""
        records = self._records.get(store)
        if records is None:
            return lambda ns, name, revision: None
        return lambda ns, name, revision: records.get((ns, name, revision))


K = TypeVar("K")
V = TypeVar("V")
_PerStore = weakref.WeakKeyDictionary[Store, dict[K, V]]


def _put(cache: dict[K, V], key: K, value: V, size: int) -> None:
    cache[key] = value
    if len(cache) > size:
        del cache[next(iter(cache))]
