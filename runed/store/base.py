"""The store interface: what API roles and the controller may rely on (SQLite now, PostgreSQL later)."""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, Protocol, TypeVar

import orjson

P = ParamSpec("P")
T = TypeVar("T")

ADDED = "ADDED"
MODIFIED = "MODIFIED"
DELETED = "DELETED"


@dataclass(frozen=True)
class Record:
    """One stored object. ``data`` is a JSON-able dict owned by the kind's module."""

    kind: str
    namespace: str
    name: str
    data: dict[str, Any]
    revision: int
    created_revision: int


class Change:
    """One committed change; ``revision`` is global and strictly increasing.

    A change read from the log (:meth:`encoded`) decodes its ``data`` when it is first read: a
    watcher that needs only the kind and key of most changes (the controller, whose own writes
    come back through its watch) does not decode a thousand records per thousand writes.
    """

    __slots__ = ("_data", "_raw", "kind", "name", "namespace", "op", "revision", "ts")

    def __init__(
        self, revision: int, kind: str, namespace: str, name: str, op: str, data: dict[str, Any] | None, ts: float
    ) -> None:
        self.revision = revision
        self.kind = kind
        self.namespace = namespace
        self.name = name
        self.op = op
        self.ts = ts
        self._data = data
        self._raw: str | bytes | None = None

    @classmethod
    def encoded(
        cls, revision: int, kind: str, namespace: str, name: str, op: str, raw: str | bytes | None, ts: float
    ) -> Change:
        """A change whose ``data`` is the JSON ``raw``, decoded when first read."""
        change = cls(revision, kind, namespace, name, op, None, ts)
        change._raw = raw
        return change

    @property
    def data(self) -> dict[str, Any] | None:
        if self._raw is not None:
            self._data, self._raw = orjson.loads(self._raw), None
        return self._data

    def _key(self) -> tuple[Any, ...]:
        return (self.revision, self.kind, self.namespace, self.name, self.op, self.data, self.ts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Change) and self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]  # mutable cache inside: compared, never hashed

    def __repr__(self) -> str:
        return (
            f"Change(revision={self.revision}, kind={self.kind!r}, namespace={self.namespace!r}, "
            f"name={self.name!r}, op={self.op!r}, data={self.data!r}, ts={self.ts!r})"
        )


@dataclass(frozen=True)
class AuditEntry:
    subject: str
    method: str
    resource: str
    verb: str
    namespace: str
    name: str
    outcome: str
    code: str
    request_id: str
    peer: str
    detail: str = ""
    ts: float = 0.0
    id: int = 0


@dataclass
class ListResult:
    items: list[Record] = field(default_factory=list)
    # Opaque continuation (the last name returned) or "" when there is no more.
    next_cursor: str = ""
    revision: int = 0


class Reader(Protocol):
    """What reads one object: a store, or records read from it in advance (off the event loop)."""

    def get(self, kind: str, namespace: str, name: str) -> Record | None: ...


class Store(Protocol):
    """Revisioned object store with a durable change log."""

    def get(self, kind: str, namespace: str, name: str) -> Record | None: ...

    def get_at(self, kind: str, namespace: str, name: str, revision: int) -> Record | None:
        """The object as it was at ``revision`` (None when it did not exist then)."""
        ...

    def get_by_index(self, kind: str, index_key: str) -> Record | None: ...

    def list(
        self,
        kind: str,
        namespace: str | None = None,
        *,
        after: tuple[str, str] | None = None,
        limit: int | None = None,
        known: Callable[[str, str, int], Record | None] | None = None,
    ) -> ListResult:
        """Objects ordered by (namespace, name); ``after`` continues a previous page. ``known(namespace,
        name, revision)`` may hand back a record the caller already holds at that revision (shared,
        read-only), which spares decoding its row."""
        ...

    def count(self, kind: str, namespace: str | None = None) -> int: ...

    def create(
        self, kind: str, namespace: str, name: str, data: dict[str, Any], *, index_key: str | None = None
    ) -> Record: ...

    def put(
        self,
        kind: str,
        namespace: str,
        name: str,
        data: dict[str, Any],
        *,
        expect_revision: int | None = None,
        index_key: str | None = None,
    ) -> Record: ...

    def update(
        self,
        kind: str,
        namespace: str,
        name: str,
        mutate: Callable[[dict[str, Any] | None], dict[str, Any] | None],
        *,
        index_key: str | None = None,
    ) -> Record | None: ...

    def delete(self, kind: str, namespace: str, name: str, *, expect_revision: int | None = None) -> Record | None: ...

    def delete_many(self, keys: Sequence[tuple[str, str, str]]) -> None:
        """Delete each of ``keys`` (kind, namespace, name) that exists, in their order, in one transaction."""
        ...

    def transaction(self) -> contextlib.AbstractContextManager[None]: ...

    def current_revision(self) -> int: ...

    def oldest_revision(self) -> int: ...

    def changes_since(
        self,
        revision: int,
        kinds: Sequence[str] | None = None,
        limit: int = 1000,
        *,
        deletion_data: bool = True,
    ) -> builtins.list[Change]:
        """The changes after ``revision`` (of ``kinds``), oldest first; ``deletion_data=False``: a
        DELETED change's ``data`` is None (not read: for a reader that needs only its key)."""
        ...

    def changed_since(self, revision: int, kinds: Sequence[str]) -> bool:
        """Whether an object of ``kinds`` changed after ``revision`` (True too when the change log no
        longer reaches back that far): what decides that something read at ``revision`` still holds."""
        ...

    def watch(self, kinds: Sequence[str], since: int, *, deletion_data: bool = True) -> AsyncIterator[Change]: ...

    def audit(self, entry: AuditEntry) -> None: ...

    def list_audit(
        self, *, since_id: int = 0, limit: int = 100, subject: str | None = None
    ) -> builtins.list[AuditEntry]: ...

    def meta_get(self, key: str) -> str | None: ...

    def meta_set(self, key: str, value: str) -> None: ...

    def close(self) -> None: ...

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)``, one unit of store work (a read, or a whole transaction), off the
        event loop when the store waits on the network (see :mod:`runed.store.offload`)."""
        ...

    async def run_long(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """As :meth:`run`, but off the event loop on every backend: for a unit long enough (a
        commit of hundreds of records) that the loop has better to do meanwhile than wait."""
        ...


def iter_all(store: Store, kind: str, namespace: str | None = None, page: int = 500) -> Iterator[Record]:
    """Every object of a kind, in pages, without holding one long read."""
    after: tuple[str, str] | None = None
    while True:
        res = store.list(kind, namespace, after=after, limit=page)
        yield from res.items
        if not res.next_cursor or not res.items:
            return
        last = res.items[-1]
        after = (last.namespace, last.name)
